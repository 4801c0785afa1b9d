"""What a rollout does to a host, read from its node script before and after a change (pure).

A rollout (infra/boot/node_apply.py) re-runs the host's node script. Each step of that script
keeps what is already in place when its own identity is unchanged: a container whose run line
(and config) has the digest its marker holds keeps running, the deploy watcher whose command has
the same digest keeps running, dockerd is left alone when daemon.json already says what the
script wants, the weights are not staged again while the ready marker holds the same weights
identity. So two renderings of a script say what a rollout from one to the other touches: the
steps whose identity differs. The README's change -> effect table states these per row, and
tests/test_day2.py checks each row against the rendered scripts of a base and a changed stack.
"""

from __future__ import annotations

import re

# What a rollout can touch, in the README's words.
DOCKERD = "dockerd"
NODE_CONTAINER = "node container"
WEIGHTS = "weights"
SERVE_YAML = "serve.yaml"
DEPLOY_WATCHER = "deploy watcher"
AGENTS = "metrics agents"
TOUCHES = (DOCKERD, NODE_CONTAINER, WEIGHTS, SERVE_YAML, DEPLOY_WATCHER, AGENTS)

_CONTAINER_RUN = re.compile(r'cat /etc/llmfleet/([\w.-]+)\.run 2>/dev/null\)" == \'?(\w+)')
_UNIT_SHA = re.compile(r'cat /etc/llmfleet/([\w.-]+)\.sha 2>/dev/null\)" == \'?(\w+)')
_SERVE = re.compile(r"cat > /etc/llmfleet/serve\.yaml <<'LLMFLEET_EOF'\n(.*?)\nLLMFLEET_EOF", re.S)
_DAEMON = re.compile(r"^  ('\{.*)\) \|\| die \"cannot update", re.M)
_WEIGHTS = re.compile(r"^ *(?:WEIGHTS_ID=|aws s3 (?:sync|cp) ).*$", re.M)


def steps(script: str) -> dict[str, str]:
    """Each step's identity in one node script: step name -> what decides whether it re-runs."""
    out: dict[str, str] = {}
    for name, digest in _CONTAINER_RUN.findall(script):
        out[f"container {name}"] = digest
    for name, digest in _UNIT_SHA.findall(script):
        out[f"unit {name}"] = digest
    if m := _SERVE.search(script):
        out["serve.yaml"] = m.group(1)
    if m := _DAEMON.search(script):
        out["daemon.json"] = m.group(1)
    out["weights"] = "\n".join(m.group(0).strip() for m in _WEIGHTS.finditer(script))
    return out


def _touch(step: str, role: str) -> str:
    if step == "daemon.json":
        return DOCKERD
    if step == "serve.yaml":
        return SERVE_YAML
    if step == "weights":
        return WEIGHTS
    if step == f"container llmfleet-{role}":
        return NODE_CONTAINER
    if step == "unit deploy":
        return DEPLOY_WATCHER
    return AGENTS  # the boot log shipper, DCGM, Prometheus and its discovery copier


def rollout_touches(before: str, after: str, role: str) -> set[str]:
    """What a rollout from the `before` script to the `after` one restarts or rewrites on a host
    of `role`; an empty set when the scripts are the same (the association does not even run)."""
    if before == after:
        return set()
    a, b = steps(before), steps(after)
    out = {_touch(k, role) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if role == "worker" and WEIGHTS in out:
        # A worker that re-stages restarts its node container (WEIGHTS_RESTAGED in the node
        # script): Ray reads the weights fingerprint label only at `ray start`.
        out.add(NODE_CONTAINER)
    return out
