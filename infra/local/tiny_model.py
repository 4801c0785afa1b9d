"""Tiny models generated on this machine, never downloaded: a DeepSeek-V3-architecture one (the
local cluster's default, R1's stand-in) and a Llama-architecture one (`local up --model
llmfleet/tiny-llama`) for what vLLM's CPU build does not do with MLA: prefix caching.

It has the real architecture (MLA attention, MoE with shared + routed experts, a dense first
layer) at toy size, random weights from a seed, and a byte-level BPE tokenizer trained here on a
built-in corpus over printable ASCII only. It is saved with ``save_pretrained`` so the ordinary transformers loading path
(``AutoModelForCausalLM`` / ``AutoTokenizer``) is exercised exactly as for a real checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

MODEL_ID = "llmfleet/tiny-deepseek-v3"
# A non-MLA twin: plain grouped-query attention (Llama). vLLM's CPU build turns prefix caching
# (and chunked prefill) off for MLA models on CPUs without AMX, so the prefix-routing proof
# (tests/test_local_prefix.py) serves this one and reads vLLM's own prefix-cache counters.
LLAMA_MODEL_ID = "llmfleet/tiny-llama"
TINY_MODEL_IDS = (MODEL_ID, LLAMA_MODEL_ID)
DATA_DIR_ENV = "LLMFLEET_DATA_DIR"

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜pad｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT]  # ids 0..4, in this order

# R1's reasoning markers and tool-call markers: added tokens of its tokenizer, not special ones,
# so they stay in the decoded text, where vLLM's deepseek_r1 reasoning parser and deepseek_v3
# tool parser look for them (special tokens are skipped when decoding).
THINK = "<think>"
END_THINK = "</think>"
TOOL_TOKENS = [
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
]
ADDED_TOKENS = [THINK, END_THINK, *TOOL_TOKENS]  # ids 512.., after the trained vocabulary

# DeepSeek-R1's own chat template, verbatim: the chat_template of deepseek-ai/DeepSeek-R1's
# tokenizer_config.json (the revision whose generation prompt opens the reasoning, Feb 2025).
# The generation prompt ends in "<｜Assistant｜><think>\n", so the model starts inside its
# reasoning and vLLM's deepseek_r1 parser takes everything up to "</think>" as reasoning;
# earlier assistant turns are sent without their reasoning (the split('</think>') below).
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', "
    "is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' "
    "+ tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' "
    "+ '```' + '<｜tool▁call▁end｜>'}}"
    "{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] "
    "+ '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' "
    "+ tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- set ns.is_first = true -%}"
    "{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] "
    "+ '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}"
    "{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}{%- endfor -%}"
    "{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

CORPUS = """\
A GPU cluster is a group of hosts that each carry several graphics processors. The hosts talk over
a fast network, and a scheduler such as Ray decides which process runs on which GPU. Large language
models do not fit on one GPU, so the weights are split across many of them.

Tensor parallelism splits every layer across the GPUs of one host. Each GPU holds a slice of each
weight matrix and the slices are joined with an all-reduce after every layer. This needs a fast link
between the GPUs, which is why it stays inside a host when there is no NVLink.

Pipeline parallelism splits the model by layers. The first host runs the first layers, hands the
activations to the next host, and so on. Only the activations cross the network, so slower links
between hosts are fine. A batch of requests keeps every stage of the pipeline busy.

DeepSeek-V3 is a mixture of experts. Each token is sent to a few routed experts and one shared
expert, so only a small part of the model works for each token. Multi-head latent attention keeps
the key and value cache small by storing a compressed latent vector for every token.

Serving a model means answering requests as they arrive. The server batches requests that arrive
together, runs one forward pass for all of them, and streams the new tokens back to each client. The
OpenAI API is the common language of these servers: chat completions, completions and models.

Memory bandwidth sets the speed of decoding. Every new token reads the active weights once, so a
GPU with 864 gigabytes per second of bandwidth can read a few hundred gigabytes in a fraction of a
second. Batching many requests reads the weights once for all of them and raises the throughput.
"""

TOKENIZER_VOCAB = 512
_INIT_LOCK = threading.Lock()


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "llmfleet")


def model_dir_for(data_dir: Path, seed: int, model_id: str = MODEL_ID) -> Path:
    # v3: MLA at R1's kv_lora_rank/rope dims and noaux_tc routing (what vLLM's CPU build serves);
    # v4: R1's chat template and its <think>/tool tokens in the tokenizer.
    # tiny-llama v1: the same tokenizer (R1's template and markers) on a Llama body.
    name = "tiny-llama-v1" if check_model_id(model_id) == LLAMA_MODEL_ID else "tiny-deepseek-v3-v4"
    return Path(data_dir) / "models" / f"{name}-s{seed}"


def check_model_id(model_id: str) -> str:
    """The id if it names a tiny model; ValueError with the one line otherwise."""
    if model_id not in TINY_MODEL_IDS:
        raise ValueError(f"model {model_id!r}: allowed: {', '.join(TINY_MODEL_IDS)}")
    return model_id


# The shape the local cluster's layout is checked against before anything starts
# (infra/local/layout.py): TP must divide the heads, PP may not exceed the layers. Both tiny
# models have it.
TINY_HEADS = 4
TINY_LAYERS = 2


def tiny_config(vocab_size: int):
    """Every DeepSeek-V3 feature at toy size: MLA, 8 routed + 1 shared expert, 1 dense layer."""
    from transformers import DeepseekV3Config

    return DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_HEADS,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        # R1's router: sigmoid scores with a learned bias (e_score_correction_bias); vLLM's
        # loader expects that tensor for a DeepSeek-V3 checkpoint.
        topk_method="noaux_tc",  # pyright: ignore[reportCallIssue] - kept, not declared by the class
        scoring_func="sigmoid",  # pyright: ignore[reportCallIssue]
        first_k_dense_replace=1,
        q_lora_rank=32,
        # vLLM's CPU MLA kernel supports only kv_lora_rank + qk_rope_head_dim = 576, R1's own
        # 512 + 64; the rest stays toy-sized.
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=2048,
        num_mtp_layers=0,  # serving never loads the MTP module
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        tie_word_embeddings=False,
    )


def tiny_llama_config(vocab_size: int):
    """A Llama body at toy size with the same heads and layers as the DeepSeek one: grouped-query
    attention (2 KV heads for 4 query heads), head_dim 32 (a size vLLM's CPU attention supports)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_HEADS // 2,
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=SPECIAL_TOKENS.index(BOS),
        eos_token_id=SPECIAL_TOKENS.index(EOS),
        pad_token_id=SPECIAL_TOKENS.index(PAD),
        tie_word_embeddings=False,
    )


# ByteLevel's stand-ins for printable ASCII: bytes 0x21-0x7E are themselves, space is U+0120
# and newline U+010A. The vocabulary holds these and their merges only, so every token decodes
# to printable text on its own: random weights may pick any token, and a full byte alphabet
# would make them print lone UTF-8 bytes (U+FFFD) and control characters. Input characters
# outside it are dropped by the tokenizer, which a model with random weights cannot miss.
ALPHABET = [chr(b) for b in range(0x21, 0x7F)] + ["\u0120", "\u010a"]


def build_tokenizer():
    """Byte-level BPE over printable ASCII trained on CORPUS, as a PreTrainedTokenizerFast with a
    chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ALPHABET,
        limit_alphabet=len(ALPHABET),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n\n"), trainer=trainer)
    # Plain prompts get a BOS like DeepSeek's; the chat template writes its own.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    # After training, so the BPE vocabulary is what it was; normalized=False keeps them whole.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_into(out_dir: Path, seed: int, model_id: str = MODEL_ID) -> None:
    """Write tokenizer + random-weight model to out_dir, deterministically from seed."""
    import torch
    from transformers import DeepseekV3ForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    llama = check_model_id(model_id) == LLAMA_MODEL_ID
    config = (tiny_llama_config if llama else tiny_config)(vocab_size=len(tokenizer))
    # Weight init draws from torch's global RNG: hold a lock so threads building at once cannot
    # interleave their draws, and fork the RNG so the caller's random state is left untouched.
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (
            LlamaForCausalLM(config) if isinstance(config, LlamaConfig) else DeepseekV3ForCausalLM(config)
        ).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def ensure_tiny_model(data_dir: Path | None = None, seed: int = 0, model_id: str = MODEL_ID) -> Path:
    """Return the tiny model's directory under the data dir, creating it once."""
    data = Path(data_dir) if data_dir else default_data_dir()
    return ensure_tiny_model_at(model_dir_for(data, seed, model_id), seed, model_id)


def ensure_tiny_model_at(final: Path, seed: int = 0, model_id: str = MODEL_ID) -> Path:
    """Create the tiny model at exactly `final` unless it is there already.

    Built in a temp dir beside the target and renamed into place, so a reader never sees a half
    written model and concurrent callers are safe: the first rename wins, the others discard theirs.
    """
    final = Path(final)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_into(tmp, seed, model_id)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_tiny_model_id(model_id: str) -> bool:
    return model_id in TINY_MODEL_IDS
