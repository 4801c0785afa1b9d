"""A local cluster's state on disk: $LLMFLEET_STATE_DIR (default ~/.cache/llmfleet/local) holds
`<name>.json` (hosts, pids, endpoint, model), `<name>.token` (mode 0600), `<name>-serve.yaml`
(names the token's env var, never holds it) and logs under `logs/<name>/`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from infra.local.hosts import HostSet
from infra.local.layout import LocalError

STATE_DIR_ENV = "LLMFLEET_STATE_DIR"


DEFAULT_NAME = "local"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.home() / ".cache" / "llmfleet" / "local")


def state_paths(sd: Path, name: str) -> dict[str, Path]:
    return {
        "state": sd / f"{name}.json",
        "token": sd / f"{name}.token",
        "serve": sd / f"{name}-serve.yaml",
        "logs": sd / "logs" / name,
        "activity": sd / f"{name}-last-served",
    }


def load_state(name: str = DEFAULT_NAME, sd: Path | None = None) -> dict | None:
    path = state_paths(sd or state_dir(), name)["state"]
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise LocalError(f"state file {path} is corrupt; run `llmfleet local down` to clean up") from None


def save_state(st: dict, sd: Path) -> None:
    path = state_paths(sd, st["name"])["state"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=2))
    tmp.replace(path)


def read_token(st: dict) -> str:
    try:
        return Path(st["token_file"]).read_text().strip()
    except OSError as e:
        raise LocalError(
            f"token file {st['token_file']}: {e.strerror}; run `llmfleet local up` again"
        ) from None


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


def public_doc(st: dict) -> dict:
    """What `up --json` prints: endpoint, token, model, hosts."""
    return {
        "endpoint": st["endpoint"],
        "token": read_token(st),
        "model": st["model"],
        "hosts": [{"name": h["name"], "ip": h["ip"]} for h in st["hosts"]],
    }


def hostset(st: dict) -> HostSet:
    return HostSet.from_json(st["hostset"])
