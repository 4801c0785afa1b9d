"""Stack policy on the inference engine: vLLM does not run the checkpoint's own Python.

With trust_remote_code, vLLM imports the modeling code a checkpoint ships (config.json's
auto_map) into every engine process, which holds the host network, the GPUs and the Ray
token. The DeepSeek-R1 family is native in vLLM, so the stacks ship with it off; it is on only
through a catalog model that needs it or `llmfleet:trustRemoteCode`. Advisory: a model may
truly need it, and then the operator has read its code; the warning says the engine runs it.

What is checked is what the hosts get: the Serve config inside each host's node script (the
EC2 head's SSM parameter, an owned host's bootstrap command), and the stack config behind it
for a preview in which those are not known yet.
"""

from __future__ import annotations

import binascii
import re
import zlib

from pulumi_policy import EnforcementLevel, ReportViolation, StackValidationArgs, StackValidationPolicy

from . import _config
from ._props import is_unknown
from ._stackview import Res, StackView

SSM_PARAMETER = "aws:ssm/parameter:Parameter"
REMOTE_COMMAND = "command:remote:Command"
# infra.rayconf.serve_config.to_yaml writes engine_kwargs one key a line.
ENABLED = re.compile(r"^\s*trust_remote_code:\s*true\s*$", re.MULTILINE)


def _script(res: Res) -> str | None:
    """The node script a resource carries, as text (an SSM parameter holds it gzip+base64)."""
    if res.type == REMOTE_COMMAND:
        text = res.props.get("create")
        return text if isinstance(text, str) and not is_unknown(text) else None
    value = res.props.get("insecureValue", res.props.get("value"))
    if not isinstance(value, str) or is_unknown(value):
        return None
    from infra.boot.node_apply import unpack_script

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
            "leave it off unless the model has no native vLLM implementation"
        )


ENGINE_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="trust-remote-code",
        description="vLLM does not run a checkpoint's own Python (trust_remote_code off, llmfleet:trustRemoteCode); advisory.",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_trust_remote_code,
    ),
]
