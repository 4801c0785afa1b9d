"""LoRA adapters: the catalog's word on which models take them, llmfleet:lora in the Serve
config (validated by Ray's LLMConfig and vLLM's EngineArgs), and `llmfleet finetune`'s checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.commands.finetune import NOT_BUILT
from infra.stack import lora
from infra.stack.config import ConfigError, load_stack_config

runner = CliRunner()
DEV = {"llmfleet:model": "deepseek-r1-distill-qwen-7b", "llmfleet:gpuInstanceType": "g6.xlarge"}
ADAPTERS = "s3://llmfleet-adapters-test/dev/"


def test_lora_serving_false_needs_a_reason(tmp_path: Path):
    from infra.catalog import LoraSupport

    with pytest.raises(ValueError, match="needs lora.reason"):
        LoraSupport(serving=False, source="a source")


def test_prod_r1_with_lora_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:model": "deepseek-r1", "llmfleet:lora": {"adapters": ADAPTERS}}, "prod")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "llmfleet:model = 'deepseek-r1': cannot take LoRA adapters (llmfleet:lora is set): vLLM 0.29 picks the kernel of its FP8 routed experts"
    )
    assert (
        "allowed: deepseek-r1-distill-qwen-7b, deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b"
        in msg
    )


@pytest.mark.parametrize(
    ("lora_value", "expected"),
    [
        ({"adapters": "/opt/adapters"}, "llmfleet:lora.adapters = '/opt/adapters': allowed: an s3://"),
        ({"adapters": "s3://llmfleet-adapters-test/a/../b"}, "llmfleet:lora.adapters = "),
        ({"adapters": ADAPTERS, "maxRank": 12}, "llmfleet:lora.maxRank = 12: allowed: one of 1, 8, 16"),
        ({"adapters": ADAPTERS, "maxAdapters": 0}, "llmfleet:lora.maxAdapters = 0"),
        (
            {"adapters": ADAPTERS, "rank": 8},
            "llmfleet:lora.rank = 8: unknown field; allowed: adapters, maxAdapters",
        ),
        ({"maxRank": 8}, "llmfleet:lora.adapters"),
    ],
)
def test_bad_lora_settings_are_one_line(lora_value, expected):
    with pytest.raises(ConfigError) as e:
        load_stack_config({**DEV, "llmfleet:lora": lora_value}, "dev")
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_adapters_inside_the_weights_prefix_are_refused():
    raw = {
        **DEV,
        "llmfleet:weightsUri": "s3://llmfleet-weights-test/qwen/",
        "llmfleet:lora": {"adapters": "s3://llmfleet-weights-test/qwen/adapters"},
    }
    with pytest.raises(ConfigError, match=r"^llmfleet:lora.adapters = .*inside llmfleet:weightsUri"):
        load_stack_config(raw, "dev")
    raw["llmfleet:lora"] = {"adapters": "s3://llmfleet-weights-test/adapters/"}  # beside it: fine
    assert load_stack_config(raw, "dev").lora is not None


@pytest.mark.parametrize("key", ["enable_lora", "max_loras", "max_lora_rank"])
def test_lora_engine_args_only_through_the_lora_key(key):
    with pytest.raises(ConfigError, match=rf"^llmfleet:engineArgs.{key} = .*set llmfleet:lora"):
        load_stack_config({**DEV, "llmfleet:engineArgs": {key: 1}}, "dev")


def test_dev_serve_config_with_lora_is_accepted_by_ray_and_vllm():
    from ray.serve.llm import LLMConfig

    from infra.rayconf import serve_config as sc

    setting = json.dumps({"adapters": ADAPTERS, "maxAdapters": 3, "maxRank": 32})
    res = runner.invoke(
        app, ["render", "serve-config", "--stack", "dev", "--offline", "-c", f"llmfleet:lora={setting}"]
    )
    assert res.exit_code == 0, res.output
    llm = yaml.safe_load(res.stdout)["applications"][0]["args"]["llm_configs"][0]
    assert llm["lora_config"] == {
        "dynamic_lora_loading_path": ADAPTERS.rstrip("/"),
        "max_num_adapters_per_replica": 3,
        "download_timeout_s": 30.0,
        "max_download_tries": 3,
    }
    kw = llm["engine_kwargs"]
    assert (kw["enable_lora"], kw["max_loras"], kw["max_lora_rank"]) == (True, 3, 32)
    config = LLMConfig.model_validate(llm)
    assert config.lora_config.max_num_adapters_per_replica == 3
    assert config.get_engine_config().engine_kwargs["max_lora_rank"] == 32
    sc.validate_engine_kwargs(kw, llm["model_loading_config"]["model_source"])  # vLLM's EngineArgs


def test_ray_validates_the_rendered_lora_config():
    """The rendered lora_config goes through Ray's LoraConfig: a path Ray cannot load adapters
    from (a host path) is refused at render, in one line."""
    from infra.rayconf import serve_config as sc

    base = sc.ServeInputs(
        model_id="m",
        model_source="/opt/llmfleet/models/m",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        gpu_model="L4",
    )
    good = {"dynamic_lora_loading_path": "s3://llmfleet-adapters-test/a", "max_num_adapters_per_replica": 2}
    doc = sc.render_serve_config(replace(base, lora_config=good, lora_engine_kwargs={"enable_lora": True}))
    assert sc._validate_with_ray(doc) == []
    bad = sc.render_serve_config(
        replace(base, lora_config={**good, "dynamic_lora_loading_path": "/opt/adapters"})
    )
    with pytest.raises(sc.ServeConfigError) as e:
        sc._validate_with_ray(bad)
    assert str(e.value).startswith("Ray Serve LLM rejected the LLMConfig: ") and "\n" not in str(e.value)
    assert "lora_config: Invalid lora_config" in str(e.value) and "/opt/adapters" in str(e.value)


def test_serve_config_without_lora_has_none():
    res = runner.invoke(app, ["render", "serve-config", "--stack", "dev", "--offline"])
    assert res.exit_code == 0, res.output
    llm = yaml.safe_load(res.stdout)["applications"][0]["args"]["llm_configs"][0]
    assert "lora_config" not in llm and "enable_lora" not in llm["engine_kwargs"]


def test_plan_lora_refuses_r1_and_plans_a_distill():
    res = runner.invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S", "--lora", "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stdout)["error"]
    assert (err["key"], err["value"]) == ("--model", "deepseek-r1")
    assert (
        err["allowed"]
        == "deepseek-r1-distill-qwen-7b, deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b"
    )
    assert "cannot take LoRA adapters (--lora)" in err["message"]
    res = runner.invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S", "--json"])
    assert res.exit_code == 0, res.output  # without --lora R1 plans as before
    res = runner.invoke(
        app, ["plan", "-m", "deepseek-r1-distill-qwen-7b", "-g", "L4", "--tp", "1", "--lora", "--json"]
    )
    assert res.exit_code in (0, 3) and json.loads(res.stdout)["model"] == "deepseek-r1-distill-qwen-7b"


def test_refusal_helper():
    assert lora.refusal("deepseek-r1-distill-llama-70b") is None
    assert lora.refusal("deepseek-r1", "--model").startswith(
        "--model = 'deepseek-r1': cannot take LoRA adapters: "
    )
    assert lora.refusal("gpt-2").startswith(
        "llmfleet:model = 'gpt-2': not a catalog model that takes LoRA adapters; allowed: deepseek-r1-distill-qwen-7b"
    )


# ---------------------------------------------------------------- llmfleet finetune


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "train.jsonl"
    rows = [
        {"prompt": "2+2?", "completion": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return p


def _err(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0].removeprefix("error: ")


def test_finetune_prod_r1_is_refused_with_one_line(data: Path):
    res = runner.invoke(app, ["finetune", "--stack", "prod", "--data", str(data), "--name", "support-v1"])
    assert res.exit_code == 2
    assert _err(res).startswith(
        "llmfleet:model = 'deepseek-r1': cannot take LoRA adapters: vLLM 0.29 picks the kernel of its FP8 routed experts"
    )


def test_finetune_dev_says_submission_is_not_built(data: Path):
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(data), "--name", "support-v1"])
    assert res.exit_code == 1
    assert _err(res) == NOT_BUILT


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "m:1", "", "x" * 65])
def test_finetune_name_must_be_one_safe_component(data: Path, name: str):
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(data), "--name", name])
    assert res.exit_code == 2
    assert _err(res).startswith(f"--name {name!r}: allowed: 1-64 letters")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "line 2: not JSON"),
        ('{"prompt": "q"}', "line 2: completion: Field required"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "line 2: no assistant turn"),
        ('{"messages": [{"role": "tool", "content": "q"}]}', "line 2: messages[0].role"),
        ('["prompt", "completion"]', "line 2: "),
    ],
)
def test_finetune_refuses_a_bad_line(tmp_path: Path, line: str, expected: str):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(p), "--name", "a"])
    assert res.exit_code == 2
    msg = _err(res)
    assert msg.startswith(f"--data {str(p)!r} {expected}") and "allowed: one JSON object per line" in msg


def test_finetune_refuses_empty_or_missing_data(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    for p, why in ((empty, "no examples"), (tmp_path / "missing.jsonl", "not a file")):
        res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(p), "--name", "a"])
        assert res.exit_code == 2 and why in _err(res)


def test_finetune_needs_exactly_one_target(data: Path):
    res = runner.invoke(app, ["finetune", "--data", str(data), "--name", "a"], env={"PULUMI_STACK": ""})
    assert res.exit_code == 2 and _err(res).startswith("target: missing")
    res = runner.invoke(app, ["finetune", "--local", "--stack", "dev", "--data", str(data), "--name", "a"])
    assert res.exit_code == 2 and _err(res).startswith("target: --local and --stack together")


def _declares_supports_lora(architecture: str) -> bool:
    """Whether the installed vLLM's class for `architecture` has SupportsLoRA among its bases,
    read from vLLM's source (registry.py's entry, then the class and its bases in that module),
    without importing vLLM (seconds of torch). tests/test_lora_engine.py asks vLLM's own
    supports_lora() of the class it loads."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "model_executor" / "models"
    registry = ast.parse((models_dir / "registry.py").read_text())
    entry = next(
        node.values[i]
        for node in ast.walk(registry)
        if isinstance(node, ast.Dict)
        for i, k in enumerate(node.keys)
        if isinstance(k, ast.Constant) and k.value == architecture
    )
    module, cls = (e.value for e in entry.elts)  # type: ignore[attr-defined]
    classes = {
        n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
        for n in ast.parse((models_dir / f"{module}.py").read_text()).body
        if isinstance(n, ast.ClassDef)
    }
    todo, seen = [cls], set()
    while todo:
        name = todo.pop()
        if name == "SupportsLoRA":
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(classes.get(name, []))
    return False


def test_catalog_lora_models_declare_supports_lora_in_vllms_source():
    """Every catalog model's vLLM class declares SupportsLoRA, R1's too: the catalog allows the
    dense ones (tests/test_lora_engine.py serves an adapter on the Llama class) and refuses R1
    for what is unproven (its FP8 MoE kernel path), and says so in its reason and source."""
    models = load_catalog().models
    assert [m for m in models.values() if m.lora.serving] == [m for m in models.values() if m.moe is None]
    for m in models.values():
        assert _declares_supports_lora(m.architecture), m.id
    r1 = models["deepseek-r1"].lora
    assert not r1.serving and "routed experts" in r1.reason and "SupportsLoRA" in r1.source
    # what the check would see fail: a class without it (vLLM's embedding-only BERT)
    assert not _declares_supports_lora("BertModel")


def test_finetune_local_takes_no_stack_override(data: Path):
    res = runner.invoke(
        app, ["finetune", "--local", "-c", "llmfleet:replicas=2", "--data", str(data), "--name", "a"]
    )
    assert res.exit_code == 2 and _err(res).startswith("--config 'llmfleet:replicas=2': a stack override")
    res = runner.invoke(app, ["finetune", "--local", "--data", str(data), "--name", "a"])
    assert res.exit_code == 1 and _err(res) == NOT_BUILT
