"""`llmfleet batch`: offline batch inference with ray.data.llm (build_processor + the vLLM engine
processor), on the local cluster's model or on a running stack's cluster (`ray job submit`).

Local (`--local`): the local cluster has no free slot for a batch engine: each worker host
advertises exactly its replica's CPUs (engine ranks + the replica actor) and the head's one CPU
is the ingress's, so a job submitted there would wait forever. The batch runs instead in a
short-lived Ray on this machine (BATCH_CPUS logical CPUs: one for the vLLM engine actor, one for
Ray Data's read / filter / write tasks), with the served model's own directory and the same CPU
engine settings as the local Serve config (FP32, eager, VLLM_CPU_KVCACHE_SPACE), and stops when
the job ends. The serving replicas keep running beside it.

Stack (`--stack NAME`): `ray job submit` to the cluster's dashboard (through the SSM port
forward the stack outputs name), shipping infra/bench/batch_job.py (self-contained) as the
working dir; the engine layout is the stack's plan (TP x PP bundles pinned to its GPU model).
The input may be a local file (shipped beside the job) or a URI the cluster reads; the output
must be a URI or a path on the cluster (s3://bucket/prefix/ on AWS).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from infra.bench import batch_job
from infra.bench.sweep import BenchError
from infra.errors import OfflineError
from infra.local.layout import CPU_KVCACHE_GIB, MAX_MODEL_LEN
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.planner import PlanInputError
from infra.stack.resolve import resolve
from ray_cluster import contract

if TYPE_CHECKING:
    import psutil

BATCH_CPUS = 2
# How long the driver waits for the engine's actor to end on its own before ray.shutdown():
# vLLM's shutdown (engine core + worker processes) takes a few seconds on a CPU host.
ACTOR_EXIT_TIMEOUT_S = 60.0
JOB_FILE = Path(__file__).with_name("batch_job.py")


def check_paths(input_path: str, output: str) -> None:
    if not input_path.endswith((".jsonl", ".json", ".parquet")):
        raise BenchError(f"--input: {input_path!r} is not allowed; allowed: a .jsonl, .json or .parquet file")
    if "://" not in input_path and not Path(input_path).exists():
        raise BenchError(f"--input: {input_path!r} does not exist")
    if not output:
        raise BenchError("--output: missing; allowed: a directory path or URI for the Parquet results")


def local_engine(model_dir: str) -> tuple[dict, dict, list]:
    """(engine kwargs, engine env, placement bundles) of one CPU engine of the tiny model, as the
    local Serve config runs it."""

    engine = {
        "max_model_len": MAX_MODEL_LEN,
        "dtype": "float32",  # FP8 does not run on vLLM's CPU build
        "enforce_eager": True,  # torch.compile would add tens of seconds to a short job's start
        "trust_remote_code": False,  # the tiny model is DeepSeek-V3, native in vLLM
        "enable_prefix_caching": True,
    }
    env = {"VLLM_CPU_KVCACHE_SPACE": str(CPU_KVCACHE_GIB), "HF_HUB_OFFLINE": "1"}
    return engine, env, [{"CPU": 1}]


def wait_actors_gone(
    alive: Callable[[], int | bool],
    timeout_s: float = ACTOR_EXIT_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Poll until no actor is alive (True) or the timeout passes (False). ray.shutdown() with the
    engine's MapWorker still alive kills it mid-engine: vLLM prints a traceback and its worker
    processes outlive the job for a minute."""
    end = clock() + timeout_s
    while alive():
        if clock() >= end:
            return False
        sleep(0.5)
    return True


# Process titles of the batch's engine: Ray Data's actor (ray::MapWorker(...)) and vLLM's
# engine core and workers (VLLM::EngineCore, VLLM::Worker...), the ones the issue saw linger.
ENGINE_TITLES = ("ray::MapWorker", "VLLM::")


def engine_processes(root: psutil.Process | None = None) -> list[str]:
    """Titles of the engine's processes still under this driver (its local Ray's raylet and
    workers are this process's descendants)."""
    import gc

    import psutil

    gc.collect()  # the last handles on the actor pool may sit in a reference cycle
    out = []
    for proc in (root or psutil.Process()).children(recursive=True):
        try:
            argv = proc.cmdline()
            title = " ".join(argv) if argv else proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith(ENGINE_TITLES):
            out.append(title)
    return out


def quiet_vllm(env: dict) -> None:
    """vLLM logs at INFO from its import on ("Triton not installed ..." first), in this driver
    and in every Ray worker of the short-lived Ray, whose output Ray forwards to the terminal.
    WARNING keeps errors and warnings; an explicit VLLM_LOGGING_LEVEL wins. Set before
    ray.init(): the raylet, and so every worker, inherits this process's environment."""
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


# One known upstream message, and only it: as the engine's processes exit, CPython's
# multiprocessing resource tracker prints `KeyError: '/psm_...'` (or `'/mp-...'`) with its traceback when it is
# asked to unregister a shared-memory segment it does not hold (vLLM's shared-memory message
# queues between its engine processes, on CPython < 3.13 whose SharedMemory has no track=False;
# reported benign upstream: vllm-project/vllm#5468, #5439). Ray forwards the engine actor's
# stderr to this driver, line by line, behind a "(<actor> pid=N)" prefix: the four lines of that
# traceback are dropped here, any other traceback passes (the batch test fails on any).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPEATED = r"(?: \[repeated \d+x across cluster\])?"
_TRACKER_KEYERROR = (
    re.compile(r"Traceback \(most recent call last\):" + _REPEATED + r"$"),
    re.compile(r'File "[^"]*/multiprocessing/resource_tracker\.py", line \d+, in main' + _REPEATED + r"$"),
    re.compile(r"cache\[rtype\]\.remove\(name\)" + _REPEATED + r"$"),
    # a shared-memory segment (/psm_...) or a semaphore (/mp-...: SemLock's names), both seen here
    re.compile(r"KeyError: '/?(?:psm_|mp-)[0-9A-Za-z_]+'" + _REPEATED + r"$"),
)


class TrackerNoiseFilter:
    """A text stream in front of `out` that drops the resource tracker's KeyError traceback
    (_TRACKER_KEYERROR, four consecutive lines) and passes everything else through as written:
    a partial line (a progress bar's redraw) is held only while it could start that traceback."""

    def __init__(self, out: TextIO):
        self.out = out
        self._partial = ""
        self._held: list[str] = []  # complete lines matching the traceback so far

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ... of the real stream
        return getattr(self.out, name)

    @staticmethod
    def _text(line: str) -> str:
        return _ANSI.sub("", line).rstrip("\r\n")

    def write(self, s: str) -> int:
        text = self._partial + s
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._line(line + "\n")
        if self._partial and not self._held and "Traceback" not in self._partial:
            self.out.write(self._partial)  # cannot start the traceback: show it now (a redraw)
            self._partial = ""
        return len(s)

    def _line(self, line: str) -> None:
        if _TRACKER_KEYERROR[len(self._held)].search(self._text(line)):
            self._held.append(line)
            if len(self._held) == len(_TRACKER_KEYERROR):
                self._held.clear()  # the whole known traceback: dropped
            return
        self.out.write("".join(self._held))
        self._held.clear()
        if _TRACKER_KEYERROR[0].search(self._text(line)):
            self._held.append(line)
        else:
            self.out.write(line)

    def flush(self) -> None:
        self.out.flush()

    def close_out(self) -> None:
        """Write what is held (a traceback cut short is not the known one)."""
        self.out.write("".join(self._held) + self._partial)
        self._held.clear()
        self._partial = ""
        self.out.flush()


@contextlib.contextmanager
def tracker_noise_filtered() -> Iterator[None]:
    """sys.stderr behind TrackerNoiseFilter for the block (Ray's driver prints the workers'
    forwarded lines to whatever sys.stderr is when they arrive)."""
    real = sys.stderr
    filt = TrackerNoiseFilter(real)
    sys.stderr = filt  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stderr = real
        filt.close_out()


def run_local(model_dir: str, input_path: str, output: str, max_tokens: int, batch_size: int) -> dict:
    import os

    quiet_vllm(os.environ)  # type: ignore[arg-type]
    import ray

    check_paths(input_path, output)
    engine, env, bundles = local_engine(model_dir)
    with tracker_noise_filtered():
        ray.init(address="local", num_cpus=BATCH_CPUS, include_dashboard=False,
                 object_store_memory=200 * 1024 * 1024, configure_logging=False)  # fmt: skip
        try:
            summary = batch_job.run(str(Path(input_path).resolve()), str(Path(output).resolve()), model_dir,
                                    engine, env, bundles, "STRICT_PACK", batch_size, max_tokens)  # fmt: skip
            wait_actors_gone(lambda: len(engine_processes()))
        finally:
            ray.shutdown()
    return {**summary, "where": f"a short-lived Ray on this machine ({BATCH_CPUS} CPUs)"}


def stack_engine(stack: str, overrides: list[str] | None) -> tuple[dict, dict, list, str]:
    """(engine kwargs, env, bundles, model id) of one engine of the stack's plan."""

    try:
        cfg = load_config(stack, overrides or [])
        p = resolve(cfg).plan  # with llmfleet:engineArgs held to the plan
    except (ConfigError, OfflineError, PlanInputError) as e:
        raise BenchError(str(e)) from None
    engine = {
        "tensor_parallel_size": p.tensor_parallel_size,
        "pipeline_parallel_size": p.pipeline_parallel_size,
        "max_model_len": p.max_model_len,
        "gpu_memory_utilization": p.gpu_memory_utilization,
        "trust_remote_code": cfg.effective_trust_remote_code,  # as the stack's Serve config
        "enable_chunked_prefill": True,
        "enable_prefix_caching": True,
        **cfg.engine_args,  # the stack's llmfleet:engineArgs, as in its Serve config
    }
    bundles = contract.placement_bundles(
        p.tensor_parallel_size, p.pipeline_parallel_size, "gpu", cfg.gpu_model
    )
    return engine, {"HF_HUB_OFFLINE": "1"}, bundles, cfg.model_path


def submit_argv(
    dashboard: str,
    work_dir: str,
    input_arg: str,
    output: str,
    model_source: str,
    engine: dict,
    env: dict,
    bundles: list,
    max_tokens: int,
    batch_size: int,
) -> list[str]:
    """The `ray job submit` command of the batch job (it runs on the cluster's head as a driver)."""
    return [
        "ray", "job", "submit", "--address", dashboard, "--working-dir", work_dir, "--",
        "python", JOB_FILE.name,
        "--input", input_arg, "--output", output, "--model-source", model_source,
        "--engine-kwargs", json.dumps(engine, sort_keys=True), "--env", json.dumps(env, sort_keys=True),
        "--bundles", json.dumps(bundles), "--strategy", "PACK", "--max-tokens", str(max_tokens), "--batch-size", str(batch_size),
    ]  # fmt: skip


def prepare_submit(
    stack: str, overrides: list[str] | None, dashboard: str, input_path: str, output: str, max_tokens: int,
    batch_size: int,
) -> tuple[list[str], str]:  # fmt: skip
    """(argv, working dir): the job file, and the input when it is a local file, in a fresh dir."""
    if "://" not in output and not output.startswith("/"):
        raise BenchError(f"--output: {output!r} is not allowed with --stack; allowed: a URI (s3://...) or an "
                         "absolute path on the cluster's head")  # fmt: skip
    check_paths(input_path, output)
    engine, env, bundles, model_source = stack_engine(stack, overrides)
    work = tempfile.mkdtemp(prefix="llmfleet-batch-")
    shutil.copy(JOB_FILE, work)
    input_arg = input_path
    if "://" not in input_path:
        shutil.copy(input_path, work)
        input_arg = Path(input_path).name  # the job runs in its working dir
    argv = submit_argv(
        dashboard, work, input_arg, output, model_source, engine, env, bundles, max_tokens, batch_size
    )
    return argv, work


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
