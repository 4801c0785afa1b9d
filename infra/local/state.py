"""A local cluster's state on disk: $LLMFLEET_STATE_DIR (default ~/.cache/llmfleet/local) holds
`<name>.json` (one LocalState: hosts, pids, endpoint, model), `<name>.token` (mode 0600),
`<name>-serve.yaml` (names the token's env var, never holds it) and logs under `logs/<name>/`.

LocalState is the one place the file's keys are spelled: every reader and writer goes through
it (attribute access), so a key renamed or added is one edit here that the type checker follows.
The JSON keys are the field names the untyped dict had, and the fields an older `local up` did
not write yet have the defaults its readers assumed, so a state file of a running cluster from
the previous version still loads; anything else (an unknown key, a missing one, a wrong type) is
the one-line "state file ... is corrupt" error naming the key."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infra.local.hosts import HostSet
from infra.local.layout import ENGINE, Layout, LocalError, Ports, Role
from infra.validation import first_error

STATE_DIR_ENV = "LLMFLEET_STATE_DIR"


DEFAULT_NAME = "local"


class _Record(BaseModel):
    # forbid: a key this version does not know is a file it cannot vouch for (one line, below);
    # validate_assignment: a value set after loading is held to the same types as a loaded one
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HostEntry(_Record):
    """One host's node as `up` started it (its supervisor's pid: None while `sleep` has it down)."""

    name: str
    ip: str
    role: Role
    ranks: int  # engine ranks on the host (0 on the head and trainers)
    supervisor_pid: int | None
    log: str
    container: str | None = None  # `up --image`: the host's node container


class LayoutRecord(_Record):
    hosts: int
    tp: int
    pp: int
    trainers: int = 0  # before issue #33 no host trained
    replicas: int

    def layout(self) -> Layout:
        return Layout(self.hosts, self.tp, self.pp, self.trainers)


class Options(_Record):
    """`-c llmfleet:engineArgs=...` / `llmfleet:serveOptions=...` as `up` applied them (JSON values,
    already checked against the local layout by infra.stack.engine_options.check_local)."""

    engine_args: dict[str, Any] = Field(default_factory=dict)
    serve_options: dict[str, Any] = Field(default_factory=dict)


class Supervised(_Record):
    """A helper process on the head host under a supervisor: the deploy watcher."""

    supervisor_pid: int
    log: str


class GcsRedis(Supervised):
    port: int


class LoraStore(Supervised):
    endpoint: str  # the adapters store's S3 endpoint
    adapters: str  # the adapters' URI in it


class PrometheusRecord(_Record):
    """The cluster's Prometheus, or (no binary here) only why there is none."""

    pid: int | None = None
    url: str | None = None
    config: str | None = None
    data_dir: str | None = None
    log: str | None = None
    missing: str | None = None


class LocalState(_Record):
    name: str
    mode: str  # netns | loopback (image mode: loopback)
    state_dir: str
    created: float
    layout: LayoutRecord
    routing: str = "pow2"  # before `--routing` every cluster ran pow2
    engine: str = ENGINE
    ports: Ports
    endpoint: str  # http://<head>:<port>/v1
    model: str
    model_dir: str
    token_file: str
    token_env: str
    serve_config: str
    image: str | None = None
    options: Options = Field(default_factory=Options)
    temp_dir: str
    restart_delay_s: float = 5.0
    hostset: HostSet
    hosts: list[HostEntry] = Field(default_factory=list)
    ready: bool = False
    sample: str = ""  # the first completion's text
    asleep: bool = False  # `local sleep` stopped the workers on purpose
    watcher: Supervised | None = None
    gcs_redis: GcsRedis | None = None
    lora: LoraStore | None = None
    prometheus: PrometheusRecord | None = None
    # in memory only: `up` found this cluster running with the same shape and returned it
    reused: bool = Field(default=False, exclude=True)

    @property
    def base_url(self) -> str:
        """The endpoint without its /v1 (what the readiness probe takes)."""
        return self.endpoint.removesuffix("/v1")

    def host(self, name: str) -> HostEntry | None:
        return next((h for h in self.hosts if h.name == name), None)


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


def _corrupt(path: Path, what: str) -> LocalError:
    return LocalError(f"state file {path} is corrupt ({what}); run `llmfleet local down` to clean up")


def parse_state(text: str, path: Path) -> LocalState:
    """The file's text -> LocalState, or the one-line corrupt error naming the key at fault."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise _corrupt(path, f"not JSON: {e}") from None
    try:
        return LocalState.model_validate(doc)
    except ValidationError as e:
        f = first_error(e)
        if f.type == "extra_forbidden":
            what = f"unknown key {f.path}"
        elif f.type == "missing":
            what = f"{f.path or 'state'}: required and missing"
        else:
            what = f"{f.path or 'state'} = {f.input!r}: {f.allowed()}"
        raise _corrupt(path, what) from None


def load_state(name: str = DEFAULT_NAME, sd: Path | None = None) -> LocalState | None:
    path = state_paths(sd or state_dir(), name)["state"]
    if not path.exists():
        return None
    return parse_state(path.read_text(), path)


def save_state(st: LocalState, sd: Path) -> None:
    path = state_paths(sd, st.name)["state"]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(st.model_dump_json(indent=2))
    tmp.replace(path)


def read_token(st: LocalState) -> str:
    try:
        return Path(st.token_file).read_text().strip()
    except OSError as e:
        raise LocalError(f"token file {st.token_file}: {e.strerror}; run `llmfleet local up` again") from None


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


def public_doc(st: LocalState) -> dict[str, Any]:
    """What `up --json` prints: endpoint, token, model, hosts."""
    return {
        "endpoint": st.endpoint,
        "token": read_token(st),
        "model": st.model,
        "hosts": [{"name": h.name, "ip": h.ip} for h in st.hosts],
    }
