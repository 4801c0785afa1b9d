"""The offline engine: run the real Pulumi program under a recording mock monitor.

No Pulumi CLI and no cloud: `capture(stack, overrides)` reads stacks/Pulumi.<stack>.yaml
(plus the project defaults in Pulumi.yaml and `-c KEY=VALUE` overrides), runs
__main__.py inside `run_in_stack` exactly as the Python language host does, and
records every registered resource (type, logical name, parent, inputs as Pulumi
passes them) with plausible outputs, plus the stack outputs.

Traps handled (from Pulumi's issue tracker):
- preview=False, so every output the mocks return is known and `apply` runs; a stack
  output that still resolves to None or unknown is an error, never a silent skip.
- duplicate URNs (same type + logical name + parent chain) are an error; the mock
  monitor would otherwise accept them.

The fast path: a large capture spends most of its time in Pulumi's mock machinery, so this
engine reaches into the SDK's private hooks (no source positions per resource, the mocks' state
serialized without spinning the event loop, `RegisterResource` answered here) and loads only the
pulumi_aws modules the program touches (provider_modules.py). Those hooks are not API: an SDK
without one of them (`fast_path_missing()`), or LLMFLEET_OFFLINE_FAST=0, runs the same program on
Pulumi's public MockMonitor instead, which records the same resources, only slower
(tests/test_offline_fallback.py compares the two). The SDK range in pyproject.toml is the one the
fast path was tested with.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import runpy
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import resource as presource
from pulumi.runtime import rpc
from pulumi.runtime import sync_await as psync
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.settings import get_root_resource, set_root_resource
from pulumi.runtime.stack import run_in_stack

from infra.errors import OfflineError
from infra.program.offline_mocks import RecordingMocks
from infra.program.provider_modules import light_packages
from infra.stack.config import SECRET_PLACEHOLDER, AwsStackConfig, ConfigError, StackConfig, load_stack_config
from infra.stack.files import project_root, raw_stack_config, stack_name

PROJECT = "llmfleet"
UNKNOWN_PLACEHOLDER = "[unknown]"
FAST_ENV = "LLMFLEET_OFFLINE_FAST"
# The mocks' private addresses for hosts with no VPC (owned hosts): the AWS default vpcCidr.
MOCK_VPC_CIDR = "10.42.0.0/16"
# The SDK's private names the fast path uses (module or class, attribute).
_FAST_HOOKS: tuple[tuple[Any, str], ...] = (
    (presource, "_get_stack_trace"),
    (presource, "source_pb2"),
    (pmocks, "_resolve_callbacks"),
    (pmocks.MockMonitor, "ResourceRegistration"),
    (psync, "_sync_await"),
    (psync, "_ensure_event_loop"),
)


def fast_path_missing() -> list[str]:
    """The private hooks of the fast path this Pulumi SDK lacks (empty: the fast path runs)."""
    return [f"{getattr(o, '__name__', o)}.{attr}" for o, attr in _FAST_HOOKS if not hasattr(o, attr)]


def fast_path_enabled() -> bool:
    return os.environ.get(FAST_ENV, "1") != "0" and not fast_path_missing()


# ---------------------------------------------------------------------------
# The recording monitor
# ---------------------------------------------------------------------------
def _clean(value: Any) -> tuple[Any, list[str]]:
    """Secrets -> "[secret]", unknowns -> "[unknown]" (and reported), resources -> URN."""
    unknown: list[str] = []

    def walk(v: Any, path: str) -> Any:
        if rpc.is_rpc_secret(v):
            return SECRET_PLACEHOLDER
        if isinstance(v, pulumi.output.Unknown) or v is rpc.UNKNOWN:
            unknown.append(path)
            return UNKNOWN_PLACEHOLDER
        if isinstance(v, dict):
            return {k: walk(x, f"{path}.{k}" if path else k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, pulumi.Resource):
            return "[resource]"
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)  # protobuf carries every number as a double
        return v

    return walk(value, ""), unknown


def _serialize_now(state: dict[str, Any]):
    """`rpc.serialize_properties(state)` without an event loop where nothing needs one.

    The coroutine only suspends to await a future (an Output, a resource reference); a mock's
    state is plain values, so it runs to the end in one step. MockMonitor instead spins this
    thread's event loop for every resource (`_sync_await`): a quarter of a large capture's
    time. Anything that does suspend is run the way MockMonitor runs it."""
    coro = rpc.serialize_properties(state, {})
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    return psync._sync_await(rpc.serialize_properties(state, {}))


class RecordingMonitor(pmocks.MockMonitor):
    """MockMonitor that records each resource; `fast`: answers RegisterResource itself (the fast
    path), else lets MockMonitor answer and records what it stored."""

    def __init__(self, mocks: RecordingMocks, fast: bool = True):
        super().__init__(mocks)
        self.recording_mocks = mocks  # typed: its new_resource always answers an id
        self.fast = fast
        self.records: list[dict[str, Any]] = []
        self.by_urn: dict[str, dict[str, Any]] = {}
        self.duplicates: list[str] = []
        self._claim = threading.Lock()
        self._claimed: set[str] = set()
        self.stack_outputs: dict[str, Any] | None = None
        self.unknown_inputs: list[str] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        # As the engine does: children of the root stack carry no "pulumi:pulumi:Stack$" prefix.
        urn = super().make_urn(parent, type_, name)
        return urn.replace("::pulumi:pulumi:Stack$", "::", 1)

    def RegisterResource(self, request):
        """MockMonitor.RegisterResource (same mock args, state and response), recording each
        resource; the fast path deserializes its inputs once."""
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type == "pulumi:pulumi:Stack":
            return resource_pb2.RegisterResourceResponse(urn=urn)
        # Registrations may run on several threads at once: the URN is claimed before any work,
        # under a lock, so two registrations of one URN are seen even when they overlap.
        with self._claim:
            if urn in self._claimed:
                self.duplicates.append(urn)
            self._claimed.add(urn)
        if self.fast:
            psync._ensure_event_loop()  # resource references deserialize through this thread's loop
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            clean, unknown = _clean(inputs)
            if unknown:  # the mocks see unknowns as MockMonitor passes them (None), not as markers
                inputs = rpc.deserialize_properties(request.object)
            rid, state, response = self._register_fast(request, urn, inputs)
        else:
            response = super().RegisterResource(request)  # deserialize, mocks, serialize, store
            reg = self.resources[urn]
            rid, state = reg.id, reg.state
            clean, unknown = _clean(rpc.deserialize_properties(request.object, keep_unknowns=True))
        if unknown:
            self.unknown_inputs += [f"{request.name}.{p}" for p in unknown]
        parent = None
        if request.parent and request.parent.split("::")[2].split("$")[-1] != "pulumi:pulumi:Stack":
            parent = request.parent.split("::")[-1]
        rec = {
            "type": request.type,
            "name": request.name,
            "parent": parent,
            "urn": urn,
            "dependencies": sorted(request.dependencies),
            "custom": bool(request.custom),
            # Inputs whose change replaces the resource (the replace_on_changes option).
            "replace_on_changes": sorted(request.replaceOnChanges),
            "inputs": clean,
            "outputs": _clean(dict(state))[0],
            "id": rid,
        }
        self.records.append(rec)
        self.by_urn[urn] = rec
        return response

    def _register_fast(self, request: Any, urn: str, inputs: dict[str, Any]) -> tuple[str, dict, Any]:
        """What MockMonitor.RegisterResource does, without its event-loop round trip."""
        rid, state = self.recording_mocks.new_resource(
            pmocks.MockResourceArgs(
                typ=request.type,
                name=request.name,
                inputs=inputs,
                provider=request.provider,
                resource_id=request.importId,
                custom=request.custom or False,
                transforms=pmocks._resolve_callbacks(request.transforms),
            )
        )
        obj = _serialize_now(state)
        self.resources[urn] = pmocks.MockMonitor.ResourceRegistration(urn, rid, state)
        return rid, state, resource_pb2.RegisterResourceResponse(urn=urn, id=rid, object=obj)

    def RegisterResourceOutputs(self, request):
        if "::pulumi:pulumi:Stack::" in request.urn:
            outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
            self.stack_outputs = outputs
        return super().RegisterResourceOutputs(request)


# ---------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------
@dataclass
class Capture:
    stack: str
    config: StackConfig
    raw_config: dict[str, str]
    resources: list[dict[str, Any]]
    outputs: dict[str, Any]
    invokes: list[str] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_token]

    def named(self, name: str) -> dict[str, Any]:
        return next(r for r in self.resources if r["name"] == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "resources": [{k: r[k] for k in ("type", "name", "parent", "inputs")} for r in self.resources],
            "outputs": self.outputs,
        }


def _none_paths(v: Any, path: str) -> list[str]:
    if v is None:
        return [path]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _none_paths(x, f"{path}.{k}")]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _none_paths(x, f"{path}[{i}]")]
    return []


def _no_stack_trace() -> Any:
    return presource.source_pb2.StackTrace()  # pyright: ignore[reportPrivateImportUsage] - the fast path's hook


_rare_depth = 0  # collect_rarely() nests: only the outermost one freezes and restores


@contextlib.contextmanager
def collect_rarely():
    """Freeze the heap and collect less often while the program runs.

    The program allocates ~100k short-lived objects (an Output and four futures per property of
    every resource) over ~300k long-lived ones (modules, the SDK's generated classes). At the
    default gen-0 threshold (700) the collector runs hundreds of times, and each run of an older
    generation rescans that long-lived heap: half of a 32-worker capture's CPU. Frozen objects
    are skipped; unfreeze() hands them back to the collector afterwards, and its next full run
    scans them all once (~0.1 s): a command that prices the capture after it (`cost`) holds
    this around its whole run, so that happens after its output, not in the middle."""
    global _rare_depth
    _rare_depth += 1
    if _rare_depth > 1:
        try:
            yield
        finally:
            _rare_depth -= 1
        return
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(old[0], 20_000), *old[1:])
    try:
        yield
    finally:
        _rare_depth -= 1
        gc.set_threshold(*old)
        gc.unfreeze()


def _clear_root() -> None:
    set_root_resource(None)  # pyright: ignore[reportArgumentType] - None clears it (typed Resource)


@contextlib.contextmanager
def _mocked_runtime(stack: str, mocks: RecordingMocks, monitor: RecordingMonitor, raw, secret_keys):
    """Pulumi's process-wide runtime set for one offline run, and reset after it."""
    stack_trace = getattr(presource, "_get_stack_trace", None)
    if monitor.fast:
        # Source positions only annotate the engine's diagnostics; collecting them reads the source
        # of every frame for every resource (a quarter of a large capture's time). None reach us.
        presource._get_stack_trace = _no_stack_trace
    # A loop of our own, closed at the end: a loop left for the garbage collector at
    # interpreter exit fails noisily once other libraries (ray) have closed its self-pipe.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _clear_root()
    pmocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    _clear_root()  # set_mocks registered a bare stack; run_in_stack makes the real one
    pulumi.runtime.set_all_config(raw, sorted(secret_keys))
    try:
        yield
    finally:
        if monitor.fast:
            presource._get_stack_trace = stack_trace
        _clear_root()
        # Pulumi's runtime config is process-wide: the next capture, and the policy runner, must
        # not see this stack's values (the runner is handed the StackConfig it checks).
        pulumi.runtime.set_all_config({}, [])
        loop.close()
        asyncio.set_event_loop(None)


@contextlib.contextmanager
def _in_project(project_dir: Path):
    """cwd and sys.path as the language host sets them for __main__.py."""
    old_path, old_cwd = list(sys.path), os.getcwd()
    sys.path.insert(0, str(project_dir))
    os.chdir(project_dir)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path


def _checked_outputs(monitor: RecordingMonitor, exported: list[str]) -> dict[str, Any]:
    if monitor.duplicates:
        raise OfflineError(
            f"duplicate resource URN {monitor.duplicates[0]}: each logical name must be unique per "
            "type and parent"
        )
    outputs, unknown = _clean(monitor.stack_outputs or {})
    # None values never reach the monitor: compare with what the program exported.
    missing = [f"outputs.{k}" for k in exported if k not in outputs] + _none_paths(outputs, "outputs")
    if unknown or missing:
        first = (unknown or missing)[0]
        raise OfflineError(
            f"stack output {first} is unknown after the offline run: a mock returns no value for it"
        )
    return outputs


def _config_error_in(e: BaseException) -> ConfigError | None:
    """The ConfigError a program failure was caused by (Pulumi wraps it in a RunError), if any."""
    seen: BaseException | None = e
    for _ in range(10):  # a bounded walk: exception chains can be cyclic
        if seen is None or isinstance(seen, ConfigError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def capture(
    stack: str, overrides: Sequence[str] = (), project_dir: Path | None = None, program: Path | None = None
) -> Capture:
    """Run the real program for `stack` under the recording mocks (the project: `project_dir`,
    else the one the working directory is in)."""
    project_dir = project_dir or project_root()
    raw, secret_keys = raw_stack_config(stack, overrides, project_dir)
    stack = stack_name(stack, project_dir)  # org/project/prod -> prod, as Pulumi's get_stack()
    cfg = load_stack_config(raw, stack)  # fail fast, before any resource registers
    fast = fast_path_enabled()
    if fast:
        light_packages()  # only the provider modules the program touches load (provider_modules.py)
    # hosts you own have no VPC: the mocks number their addresses in the AWS default's range
    vpc = cfg.vpc_cidr if isinstance(cfg, AwsStackConfig) else MOCK_VPC_CIDR
    mocks = RecordingMocks(cfg.region, vpc)
    monitor = RecordingMonitor(mocks, fast=fast)
    main = program or project_dir / "__main__.py"
    exported: list[str] = []

    def run_program() -> None:
        runpy.run_path(str(main), run_name="__main__")
        root = get_root_resource()
        exported.extend(getattr(root, "outputs", None) or {})  # the stack resource's exports

    try:
        with (
            collect_rarely(),
            _in_project(project_dir),
            _mocked_runtime(stack, mocks, monitor, raw, secret_keys),
        ):
            if fast:
                psync._sync_await(run_in_stack(run_program))
            else:  # _mocked_runtime set this thread's loop, not running: what _sync_await does then
                asyncio.get_event_loop().run_until_complete(run_in_stack(run_program))
    except Exception as e:  # noqa: BLE001 - shown as one line
        config_error = _config_error_in(e)
        if config_error is not None:
            # A rule that needs the plan (resolve(): replicas x nodes, engineArgs against the
            # layout) fails inside the program: it is still the config's one line.
            raise ConfigError(str(config_error)) from None
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise OfflineError(f"program failed for stack {stack}: {type(e).__name__}: {msg}") from e
    return Capture(
        stack=stack,
        config=cfg,
        raw_config=raw,
        resources=monitor.records,
        outputs=_checked_outputs(monitor, exported),
        invokes=list(mocks.calls),
    )


def redacted_config(raw: Mapping[str, str], secret_keys: set[str]) -> dict[str, str]:
    return {k: (SECRET_PLACEHOLDER if k in secret_keys else v) for k, v in raw.items()}
