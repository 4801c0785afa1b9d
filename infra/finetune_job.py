"""`llmfleet finetune`: the LoRA fine-tune (ray_cluster/finetune.py) as a Ray job, through Ray's
JobSubmissionClient on the cluster's dashboard, and the job's progress read back from its logs.

Where it runs: the job's driver (Ray's JobSupervisor, 0 CPUs) on the head; its Ray Train workers
on hosts advertising `llmfleet_train` (contract.TRAIN_RESOURCE): the local cluster's trainer hosts
(`local up --train-hosts N`). A serving replica holds its engine ranks as placement-group bundles,
which Ray reserves for it: no other task or actor is scheduled into them, so the job cannot take
them. Ray does not isolate what two processes on one host share (CPU time, memory bandwidth, the
NIC): a trainer host serves nothing, so the replicas' hosts see the job only on the network.

The data goes with the job: a working_dir of one file (data.jsonl), uploaded by Ray to its GCS
and unpacked beside the driver; the driver reads it and hands its bytes to the Train workers in
the train loop config (Ray Train V2 starts a worker in a directory of its own choosing, so a
path relative to the job's working_dir is not found there).

Auth: a stack's cluster runs Ray's token auth, so every Jobs/State API request carries the
stack's Ray cluster token in its Authorization header (Target.token; never argv, never a log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.local.state import load_state
from infra.stack.outputs import StackOutputs
from infra.status.aws import stack_secret
from ray_cluster import contract
from ray_cluster.finetune import NAME_RE, PROGRESS_PREFIX, TrainSpec

DATA_FILE = "data.jsonl"
# Ray's working_dir goes through its GCS (512 MiB cap in Ray 2.60's runtime-env packaging); a
# larger data set belongs on the hosts or in the bucket, which this command does not take yet.
MAX_UPLOAD_BYTES = 256 << 20
JOB_ID_PREFIX = "llmfleet-lora-"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")  # Ray's JobStatus values a job ends in
JOB_ID_ALLOWED = f"a job id this command printed ({JOB_ID_PREFIX}NAME-XXXXXX)"
# The job driver's log deduplication (Ray's RAY_DEDUP_LOGS) folds lines that differ only in their
# numbers once they come from two sources (ip, pid) within its 5 s window: a progress line is such a
# line, and on the local cluster, whose hosts share one Ray temp dir, two log monitors forward the
# worker's file. Seen: 2 of 12 steps reached the log, the rest folded into "[repeated 2x ...]".
# Ray's allow-list keeps every line that matches: the progress lines are never folded.
JOB_ENV = {"RAY_DEDUP_LOGS_ALLOW_REGEX": re.escape(PROGRESS_PREFIX.strip())}


class FinetuneJobError(RuntimeError):
    """One line for the user."""


@dataclass(frozen=True)
class Target:
    where: str  # "local cluster 'local'", "stack prod": for messages
    dashboard: str  # http://HOST:PORT of Ray's dashboard (the Jobs API)
    base_path: str  # the base checkpoint's directory on the hosts
    served_model: str  # the id the Serve app serves; the adapter is `<served_model>:<NAME>`
    adapters: str  # the adapters location the Serve config loads from (s3://...)
    python: str  # the interpreter on the hosts
    # The Ray cluster token (a stack's RAY_AUTH_TOKEN; None: the local cluster, auth disabled).
    # It goes in the Authorization header of each Jobs/State API request, never in argv or a log.
    token: str | None = field(default=None, repr=False)


def local_target(name: str) -> Target:
    st = load_state(name)
    if st is None:
        raise FinetuneJobError(f"local cluster {name!r}: not up; run `llmfleet local up --name {name} ...`")
    where = f"local cluster {name!r}"
    up = "llmfleet local down && llmfleet local up --hosts 3 --train-hosts 1 --lora --model llmfleet/tiny-llama"
    if st.lora is None or not st.lora.adapters:
        raise FinetuneJobError(f"{where}: serves no adapters (started without --lora); allowed: {up}")
    if not any(h.role == "trainer" for h in st.hosts):
        raise FinetuneJobError(f"{where}: has no trainer host (--train-hosts 0); allowed: {up}")
    head = st.hosts[0]
    return Target(
        where=where,
        dashboard=f"http://{head.ip}:{st.ports.dashboard}",
        base_path=st.model_dir,
        served_model=st.model,
        adapters=st.lora.adapters,
        python=sys.executable,  # the local nodes run this venv's interpreter
    )


def check_data_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise FinetuneJobError(
            f"--data {str(path)!r}: {size >> 20} MiB; allowed: up to {MAX_UPLOAD_BYTES >> 20} MiB "
            "(it travels with the job through Ray's GCS)"
        )


def entrypoint(target: Target, spec: TrainSpec) -> str:
    """The job's command line; every value was checked (TrainSpec.check, the name's pattern) and
    is quoted: the line is run by a shell on the head."""
    spec.check()
    argv = [
        target.python, "-m", "ray_cluster.finetune",
        "--base", target.base_path, "--base-model-id", target.served_model,
        "--data", DATA_FILE, "--name", spec.name, "--out", target.adapters,
        "--rank", str(spec.rank), "--alpha", str(spec.alpha),
        "--target-modules", ",".join(spec.target_modules),
        "--steps", str(spec.steps), "--batch-size", str(spec.batch_size),
        "--learning-rate", repr(spec.learning_rate), "--max-length", str(spec.max_length),
        "--num-workers", str(spec.num_workers), "--llmfleet-version", spec.llmfleet_version,
    ]  # fmt: skip
    if spec.use_gpu:
        argv.append("--use-gpu")
    return shlex.join(argv)


def llmfleet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmfleet-iac")
    except PackageNotFoundError:
        return "unknown"


def auth_headers(token: str | None) -> dict[str, str]:
    """Ray 2.60 token auth's header (what Ray's own clients send when RAY_AUTH_MODE=token: the
    dashboard's middleware checks `Authorization: Bearer <token>`). Passed explicitly rather than
    through RAY_AUTH_TOKEN in this process's env, which Ray reads only in token mode and which
    every Ray call of the process would then carry."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def ray_token(outputs: StackOutputs, ssm: Any | None) -> str:
    """A stack's Ray cluster token: SSM (SecureString, provider aws) or the `ray_auth_token`
    secret output (provider existing), read as the endpoint token is (infra/status/endpoint.py)."""
    return stack_secret(
        outputs,
        ssm,
        output="ray_auth_token",
        parameter="ray_token_parameter",
        what="Ray cluster token",
        show_secrets="`pulumi stack output --json --show-secrets > outputs.json`, then --outputs outputs.json",
        error=FinetuneJobError,
    )


# Ray's Jobs SDK logs at INFO on stderr: the working_dir's upload (two lines with a temp path) and
# the log stream's WebSocket closing. The command's own lines say what was submitted and how it ended.
RAY_INFO_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray._private.runtime_env.packaging",
    "ray.dashboard.modules.job.sdk",
)


def client(dashboard: str, token: str | None = None) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    for name in RAY_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(dashboard, headers=auth_headers(token))
    except AuthenticationError as e:  # Ray's token auth: 401 without a token, 403 with a wrong one
        raise FinetuneJobError(
            f"Ray's dashboard at {dashboard}: {str(e).splitlines()[0]} (the stack's Ray cluster token)"
        ) from None
    except (ConnectionError, RuntimeError) as e:
        raise FinetuneJobError(
            f"Ray's dashboard at {dashboard}: not reachable ({str(e).splitlines()[0]})"
        ) from None


def trainer_slots(dashboard: str, token: str | None = None) -> float:
    """`llmfleet_train` units the cluster's live nodes advertise (Ray's state API)."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    try:
        # StateApiClient, not list_nodes(): only the client takes headers (the token)
        api = StateApiClient(dashboard, headers={"Content-Type": "application/json", **auth_headers(token)})
        # ListApiOptions is `@dataclass(init=not IS_PYDANTIC_2)`: the checker sees no __init__
        options = ListApiOptions(timeout=10)  # pyright: ignore[reportCallIssue]
        nodes: list[Any] = api.list(StateResource.NODES, options=options, raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 - Ray's state API raises its own and requests' errors alike
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise FinetuneJobError(f"Ray's dashboard at {dashboard}: not reachable ({first[:200]})") from None
    return sum(
        float((n.resources_total or {}).get(contract.TRAIN_RESOURCE, 0)) for n in nodes if n.state == "ALIVE"
    )


def submit(target: Target, spec: TrainSpec, data: Path, jobs: Any | None = None) -> str:
    """Submit the fine-tune; its job id. Refused in one line when no live host takes it (the job
    would wait for `llmfleet_train` forever)."""
    check_data_size(data)
    if not NAME_RE.fullmatch(spec.name):
        raise FinetuneJobError(f"--name {spec.name!r}: allowed: 1-64 letters, digits, '_' or '-'")
    slots = trainer_slots(target.dashboard, target.token)
    if slots < spec.num_workers:
        raise FinetuneJobError(
            f"{target.where}: {slots:g} live trainer slot(s) ({contract.TRAIN_RESOURCE}) for "
            f"{spec.num_workers} worker(s); allowed: a cluster with trainer hosts"
        )
    api = jobs if jobs is not None else client(target.dashboard, target.token)
    work = Path(tempfile.mkdtemp(prefix="llmfleet-finetune-"))
    try:
        shutil.copyfile(data, work / DATA_FILE)
        return api.submit_job(
            entrypoint=entrypoint(target, spec),
            submission_id=f"{JOB_ID_PREFIX}{spec.name}-{secrets.token_hex(3)}",
            runtime_env={"working_dir": str(work), "env_vars": JOB_ENV},
            metadata={"llmfleet": "finetune", "adapter": spec.name, "model": target.served_model},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # Ray uploaded its own copy


def check_job_id(job_id: str) -> str:
    rest = job_id.removeprefix(JOB_ID_PREFIX)
    if rest == job_id or not all(c.isalnum() or c in "-_" for c in rest) or not rest:
        raise FinetuneJobError(f"JOB {job_id!r}: allowed: {JOB_ID_ALLOWED}")
    return job_id


def progress(line: str) -> dict[str, Any] | None:
    """The job's progress record on one log line (Ray prefixes a worker's lines with its actor)."""
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        return None
    try:
        doc = json.loads(line[at + len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# An exception line of a traceback; Ray's wrappers name no cause of their own.
_EXC = re.compile(r"(?:^|\s)((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): (.+)$")
_WRAPPERS = ("WorkerGroupError", "RayTaskError", "RayActorError", "ActorDiedError", "TrainingFailedError")


def cause(lines: list[str]) -> str:
    """The last exception line in a job's log that is not one of Ray's wrappers ('' if none)."""
    for ln in reversed(lines):
        m = _EXC.search(ln.strip())
        if m and not m.group(1).rsplit(".", 1)[-1].startswith(_WRAPPERS):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()[:300]}"
    return ""


class Once:
    """Each progress record once, in step order: Ray forwards a worker's lines at least once (the
    local cluster's hosts share a log dir, so each line arrives twice there), and a record for a
    step already shown, or a second `done`, is a copy."""

    def __init__(self) -> None:
        self.step = 0
        self.done = False

    def fresh(self, p: dict[str, Any]) -> bool:
        if "done" in p:
            seen, self.done = self.done, True
            return not seen
        step = p.get("step")
        if not isinstance(step, int) or step <= self.step:
            return False
        self.step = step
        return True


def fmt_progress(p: dict[str, Any]) -> str:
    if "done" in p:
        m = p.get("manifest") or {}
        return (
            f"adapter written: {p['done']} (final loss {m.get('final_loss', 0):.4f}, manifest.json beside it)"
        )
    eta = int(p["eta_s"])
    return (
        f"step {p['step']}/{p['steps']}  loss {p['loss']:.4f}  {p['tokens_per_s']:,.0f} tokens/s  "
        f"ETA {eta // 60}:{eta % 60:02d}"
    )


def follow(jobs: Any, job_id: str, on_line: Callable[[str], None]) -> str:
    """Stream the job's log lines to on_line until it ends; its final status."""

    async def tail() -> None:
        buf = ""
        async for chunk in jobs.tail_job_logs(job_id):
            buf += chunk
            *lines, buf = buf.split("\n")
            for ln in lines:
                on_line(ln)
        if buf:
            on_line(buf)

    asyncio.run(tail())
    # the log stream closes as the job ends; its status may lag by a poll of the job manager
    deadline = time.monotonic() + 30
    while (st := str(jobs.get_job_status(job_id))) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return st


def status(jobs: Any, job_id: str) -> dict[str, Any]:
    """The job's status and its last progress record (from its logs)."""
    info = jobs.get_job_info(check_job_id(job_id))
    last: dict[str, Any] | None = None
    done: dict[str, Any] | None = None
    for ln in jobs.get_job_logs(job_id).splitlines():
        p = progress(ln)
        if p is not None:
            if "done" in p:
                done = p
            else:
                last = p
    return {
        "job_id": job_id,
        "status": str(info.status),
        "message": info.message or "",
        "adapter": (info.metadata or {}).get("adapter"),
        "progress": last,
        "done": done,
    }
