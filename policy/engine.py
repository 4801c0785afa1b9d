"""Stack policies on the inference engine: vLLM does not run the checkpoint's own Python, and a
reasoning model gets the context it thinks in.

With trust_remote_code, vLLM imports the modeling code a checkpoint ships (config.json's
auto_map) into every engine process, which holds the host network, the GPUs and the Ray
token. The DeepSeek-R1 family is native in vLLM, so the stacks ship with it off; it is on only
through a catalog model that needs it or `llmfleet:trustRemoteCode`. Advisory: a model may
truly need it, and then the operator has read its code; the warning says the engine runs it.

reasoning-model-context: R1 and its distills (models.yaml `reasoning: true`) write thousands of
tokens of thought before the answer; served with max_model_len under 16,384 they are cut off
mid-thought (infra/stack/context.py). Advisory: a stack may serve short prompts on purpose.

What is checked is what the hosts get: the Serve config inside each host's node script (the
EC2 head's SSM parameter, an owned host's bootstrap command), and the stack config behind it
for a preview in which those are not known yet.
"""

from __future__ import annotations

import binascii
import re
import zlib

from pulumi_policy import EnforcementLevel, ReportViolation, StackValidationArgs, StackValidationPolicy

from infra.boot.node_apply import unpack_script
from infra.catalog import load_catalog
from infra.stack.config import ConfigError
from infra.stack.context import REASONING_FLOOR
from infra.stack.resolve import resolve

from . import _config
from ._props import is_unknown
from ._stackview import Res, StackView

SSM_PARAMETER = "aws:ssm/parameter:Parameter"
REMOTE_COMMAND = "command:remote:Command"
# infra.rayconf.serve_config.to_yaml writes engine_kwargs one key a line.
ENABLED = re.compile(r"^\s*trust_remote_code:\s*true\s*$", re.MULTILINE)
MAX_MODEL_LEN = re.compile(r"^\s*max_model_len:\s*(\d+)\s*$", re.MULTILINE)
MODEL_ID = re.compile(r"^\s*model_id:\s*(\S+)\s*$", re.MULTILINE)


def _script(res: Res) -> str | None:
    """The node script a resource carries, as text (an SSM parameter holds it gzip+base64)."""
    if res.type == REMOTE_COMMAND:
        text = res.props.get("create")
        return text if isinstance(text, str) and not is_unknown(text) else None
    value = res.props.get("insecureValue", res.props.get("value"))
    if not isinstance(value, str) or is_unknown(value):
        return None

    try:
        return unpack_script(value)
    except (binascii.Error, zlib.error, OSError, UnicodeDecodeError, ValueError):
        return value  # not a packed node script: read it as it is


def rendered_problems(view: StackView) -> list[tuple[str, str]]:
    """(urn, message) for each node script whose Serve config turns trust_remote_code on."""
    out = []
    for res in view.of_type(SSM_PARAMETER, REMOTE_COMMAND):
        text = _script(res)
        if text and ENABLED.search(text):
            out.append(
                (
                    res.urn,
                    f"{res.name}: the Serve config sets trust_remote_code: vLLM runs the checkpoint's own "
                    "Python in every engine process; unset llmfleet:trustRemoteCode unless the model needs it",
                )
            )
    return out


def _trust_remote_code(args: StackValidationArgs, report: ReportViolation) -> None:
    found = rendered_problems(StackView.of(args.resources))
    for urn, message in found:
        report(message, urn)
    cfg = _config.stack_model()
    if not found and cfg is not None and cfg.effective_trust_remote_code:
        why = (
            "llmfleet:trustRemoteCode is true"
            if cfg.trust_remote_code
            else f"the catalog's {cfg.model} needs it"
        )
        report(
            f"trust_remote_code is on ({why}): vLLM runs the checkpoint's own Python in every engine process; "
            "leave it off unless the model has no native vLLM implementation",
            None,
        )


def _short_context(model_id: str, length: int) -> str | None:
    """Why `length` is too short for `model_id` (a catalog id or its Hub name), or None."""

    models = load_catalog().models
    model = models.get(model_id) or next((m for m in models.values() if m.hf_repo == model_id), None)
    if model is None or not model.reasoning or length >= REASONING_FLOOR:
        return None
    return (
        f"max_model_len {length:,} is below {REASONING_FLOOR:,} for the reasoning model {model.id}: its thoughts "
        "run to thousands of tokens and get cut off; set llmfleet:maxModelLen to auto or >= 16384"
    )


def rendered_contexts(view: StackView) -> list[tuple[str, str, int]]:
    """(urn, served model id, max_model_len) for each node script that carries a Serve config."""
    out = []
    for res in view.of_type(SSM_PARAMETER, REMOTE_COMMAND):
        text = _script(res)
        if not text:
            continue
        length, model = MAX_MODEL_LEN.search(text), MODEL_ID.search(text)
        if length and model:
            out.append((res.urn, model.group(1).strip("'\""), int(length.group(1))))
    return out


def _reasoning_context(args: StackValidationArgs, report: ReportViolation) -> None:
    found = rendered_contexts(StackView.of(args.resources))
    for urn, model_id, length in found:
        if why := _short_context(model_id, length):
            report(why, urn)
    cfg = _config.stack_model()
    if not found and cfg is not None:
        # A preview before the node scripts are known: the plan's context for the stack config.

        try:
            length = resolve(cfg).plan.max_model_len
        except ConfigError:
            return  # the program itself stops on it, with the one-line reason
        if why := _short_context(cfg.model, length):
            report(why, None)


ENGINE_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="trust-remote-code",
        description="vLLM does not run a checkpoint's own Python (trust_remote_code off, llmfleet:trustRemoteCode); advisory.",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_trust_remote_code,
    ),
    StackValidationPolicy(
        name="reasoning-model-context",
        description="A reasoning model (R1 and its distills) is served with max_model_len >= 16384; advisory.",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_reasoning_context,
    ),
]
