"""Gang/collective preflight: reserve the engine's TP x PP placement group and all-reduce across it.

It reserves the same bundles vLLM will ask for (ray_cluster.contract: TP*PP one-rank bundles,
one GPU each on GPU hosts, one CPU plus the CPU-worker resource on CPU hosts), PACK, so the TP
groups fill a host and the PP stages span hosts; it puts one rank actor on each bundle, checks that every TP group sits on one host, and runs
an all-reduce over all ranks (NCCL with CUDA, else Gloo) whose sum must be exact.
Every wait is bounded; the placement group and actors are always released.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, cast

from ray_cluster import contract, nic, ray_api
from ray_cluster.driver import connect

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.util.placement_group import PlacementGroup

T = TypeVar("T")


class PreflightError(RuntimeError):
    """One-line failure: what was waited for and what was seen."""


@dataclass
class RankInfo:
    rank: int
    pp_stage: int
    tp_rank: int
    node_ip: str
    node_id: str
    hostname: str
    gpu_ids: list[str]


@dataclass
class TPGroup:
    pp_stage: int
    ranks: list[int]
    node_ips: list[str]
    one_host: bool


@dataclass
class PreflightResult:
    tp: int
    pp: int
    gpu_model: str | None
    ranks: list[RankInfo]
    tp_groups: list[TPGroup]
    tp_groups_within_host: bool
    backend: str = ""
    allreduce_ok: bool = False
    expected_sum: float = 0.0
    observed_sum: float = 0.0
    tensor_bytes: int = 0
    seconds: float = 0.0
    algbw_gbps: float = 0.0
    busbw_gbps: float = 0.0
    ok: bool = False
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, dims: str | None = None) -> str:
        """One line; `dims` names the gang's shape when it is not a replica's TP x PP (CPU)."""
        hosts = " | ".join(f"pp{g.pp_stage}:{','.join(sorted(set(g.node_ips)))}" for g in self.tp_groups)
        return (
            f"{dims or f'TP={self.tp} PP={self.pp}'} [{hosts}] all-reduce {self.backend} "
            f"sum {self.observed_sum:g}/{self.expected_sum:g} busbw {self.busbw_gbps:.3f} GB/s"
        )


# ---------------------------------------------------------------- pure pieces


def bundles(tp: int, pp: int, gpu_model: str | None = None, device: str = "gpu") -> list[dict[str, float]]:
    """The engine's bundles, rank r = pp_stage * TP + tp_rank (the contract's, one home)."""
    try:
        return contract.placement_bundles(tp, pp, device, gpu_model)
    except contract.ContractError as e:
        raise PreflightError(str(e)) from None


def tp_groups(ranks: list[RankInfo], tp: int, pp: int) -> list[TPGroup]:
    """Ranks [pp*TP, (pp+1)*TP) form one TP group; it must sit on one node (TP traffic stays on PCIe/NVLink)."""
    by_rank = {r.rank: r for r in ranks}
    out: list[TPGroup] = []
    for stage in range(pp):
        members = [by_rank[i] for i in range(stage * tp, (stage + 1) * tp)]
        out.append(
            TPGroup(
                pp_stage=stage,
                ranks=[m.rank for m in members],
                node_ips=[m.node_ip for m in members],
                one_host=len({m.node_id for m in members}) == 1,
            )
        )
    return out


def bus_bandwidth(nbytes: int, seconds: float, world: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s for an all-reduce, as nccl-tests defines them: busbw = algbw * 2(n-1)/n."""
    if seconds <= 0:
        return 0.0, 0.0
    alg = nbytes / seconds / 1e9
    return alg, alg * (2 * (world - 1) / world if world > 1 else 0.0)


def expected_sum(world: int) -> float:
    # Rank r contributes r + 1: small integers stay exact in float32.
    return float(world * (world + 1) // 2)


def no_fit_message(
    tp: int,
    pp: int,
    gpu_model: str | None,
    waited: float,
    total: Mapping[str, float],
    avail: Mapping[str, float],
    device: str = "gpu",
) -> str:
    need = tp * pp
    unit = "GPU" if device == "gpu" else "CPU"
    msg = (
        f"placement group of {need} {unit} bundles (TP={tp} x PP={pp}, PACK) not placed after {waited:g} s: "
        f"cluster has {total.get(unit, 0):g} {unit}s, {avail.get(unit, 0):g} available"
    )
    key = contract.worker_resource(device, gpu_model)
    if key:
        msg += f"; {key} {total.get(key, 0):g} total, {avail.get(key, 0):g} available"
    return msg


def timeout_hint(world: int, ips: list[str], timeout: float, ifname: str | None, what: str) -> str:
    return (
        f"{what} across {world} ranks on {', '.join(sorted(set(ips)))} did not finish within {timeout:g} s; "
        f"check the NIC (NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME={ifname or 'unset'}), "
        "security-group rules between the hosts, and the MTU"
    )


# ---------------------------------------------------------------- rank actor (runs on the GPU nodes)


class RankFacts(TypedDict):
    """Where a rank actor landed (RankInfo without its place in the gang)."""

    node_ip: str
    node_id: str
    hostname: str
    gpu_ids: list[str]


class AllreduceOut(TypedDict):
    backend: str
    min: float
    max: float
    seconds: float
    ifname: str | None


class _Rank:
    def __init__(self, rank: int):
        self.rank = rank

    def info(self) -> RankFacts:
        import socket

        import ray

        return {
            "node_ip": ray_api.node_ip(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def nic(self) -> str | None:
        """The NIC for Gloo/NCCL: what `ray start` exported, else the interface holding the node IP."""
        name = os.environ.get("GLOO_SOCKET_IFNAME") or os.environ.get("NCCL_SOCKET_IFNAME")
        if name:
            return name
        try:
            return nic.choose_nic(nic.read_interfaces(), ip=ray_api.node_ip()).ifname
        except nic.NicError:
            return None

    def free_port(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind((ray_api.node_ip(), 0))
            port: int = s.getsockname()[1]
            return port

    def allreduce(
        self, world: int, master_ip: str, port: int, numel: int, iters: int, timeout_s: float
    ) -> AllreduceOut:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        ifname = self.nic()
        if ifname:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
            os.environ["NCCL_SOCKET_IFNAME"] = ifname
        cuda = torch.cuda.is_available()
        backend = "nccl" if cuda else "gloo"
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        dist.init_process_group(
            backend,
            init_method=f"tcp://{master_ip}:{port}",
            rank=self.rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            t = torch.full((numel,), float(self.rank + 1), dtype=torch.float32, device=device)
            dist.all_reduce(t)  # pyright: ignore[reportUnknownMemberType] - torch leaves `tensor` unannotated
            if cuda:
                torch.cuda.synchronize()
            lo, hi = float(t.min()), float(t.max())
            dist.barrier()  # pyright: ignore[reportUnknownMemberType] - torch leaves `device_ids` unannotated
            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(t)  # pyright: ignore[reportUnknownMemberType] - as above
            if cuda:
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / max(iters, 1)
            return {"backend": backend, "min": lo, "max": hi, "seconds": seconds, "ifname": ifname}
        finally:
            dist.destroy_process_group()


class _Call(Protocol[T]):
    """An actor method's `.remote(...)`, returning its result's ObjectRef."""

    def remote(self, *args: object) -> ObjectRef[T]: ...


class _RankHandle(Protocol):
    """A rank actor's handle as the driver calls it (Ray types undecorated actor methods as plain
    functions, so its ActorHandle[_Rank] has no `.remote` on them)."""

    @property
    def info(self) -> _Call[RankFacts]: ...
    @property
    def nic(self) -> _Call[str | None]: ...
    @property
    def free_port(self) -> _Call[int]: ...
    @property
    def allreduce(self) -> _Call[AllreduceOut]: ...


# ---------------------------------------------------------------- driver


def run_preflight(
    address: str | None,
    tp: int,
    pp: int,
    gpu_model: str | None = None,
    timeout: float = 120.0,
    collective_timeout: float = 60.0,
    device: str = "gpu",
    tensor_bytes: int = 4 * 1024 * 1024,
    iters: int = 5,
) -> PreflightResult:
    """Reserve the engine's placement group on the cluster at `address`, place ranks, all-reduce.

    Connects (and later disconnects) unless ray is already initialised. Raises PreflightError
    with one line on any bounded wait that runs out; returns the result otherwise.
    """
    import ray
    from ray.util.placement_group import placement_group

    bundle_list = bundles(tp, pp, gpu_model, device)
    world = tp * pp
    owns_connection = not ray.is_initialized()
    if owns_connection:
        connect(address or "auto")
    pg: PlacementGroup | None = None
    actors: list[_RankHandle] = []
    try:
        # The GPU engine's own strategy (PACK). On CPU too: there the gang deliberately spans every
        # replica host (node.preflight_layout), which STRICT_PACK, the CPU engine's, would refuse.
        strategy = contract.placement_strategy("gpu")
        pg = placement_group(bundle_list, strategy=strategy, name=f"llmfleet-preflight-tp{tp}-pp{pp}")
        ready, _ = ray_api.wait([ray_api.placement_ready(pg)], timeout=timeout)
        if not ready:
            raise PreflightError(
                no_fit_message(
                    tp,
                    pp,
                    gpu_model,
                    timeout,
                    ray_api.cluster_resources(),
                    ray_api.available_resources(),
                    device,
                )
            )
        actors += _place_ranks(pg, bundle_list)
        infos = _get(
            [a.info.remote() for a in actors],
            timeout,
            f"{world} rank actors did not start within {timeout:g} s",
            "rank actor failed",
        )
        result = _placement_result(tp, pp, gpu_model, infos)
        _measure_allreduce(actors, result, tensor_bytes, iters, timeout, collective_timeout)
        result.ok = result.allreduce_ok and result.tp_groups_within_host
        return result
    finally:
        _release(actors, pg, owns_connection)


def _placement_result(tp: int, pp: int, gpu_model: str | None, infos: list[RankFacts]) -> PreflightResult:
    """Where each rank landed; a TP group that spans hosts is a problem (its all-reduce leaves the host)."""
    ranks = [RankInfo(rank=i, pp_stage=i // tp, tp_rank=i % tp, **info) for i, info in enumerate(infos)]
    groups = tp_groups(ranks, tp, pp)
    result = PreflightResult(
        tp=tp,
        pp=pp,
        gpu_model=gpu_model,
        ranks=ranks,
        tp_groups=groups,
        tp_groups_within_host=all(g.one_host for g in groups),
    )
    for g in groups:
        if not g.one_host:
            result.problems.append(
                f"TP group pp{g.pp_stage} (ranks {g.ranks}) spans hosts {sorted(set(g.node_ips))}"
            )
    return result


def _release(actors: Sequence[_RankHandle], pg: PlacementGroup | None, owns_connection: bool) -> None:
    """Best effort: kill the rank actors, free the placement group, disconnect if we connected."""
    from ray.util.placement_group import remove_placement_group

    for a in actors:
        try:
            ray_api.kill(a)
        except Exception:
            pass
    if pg is not None:
        try:
            remove_placement_group(pg)
        except Exception:
            pass
    if owns_connection:
        ray_api.shutdown()


def _place_ranks(pg: PlacementGroup, bundle_list: list[dict[str, float]]) -> list[_RankHandle]:
    """One rank actor per bundle; each takes its whole bundle, as the engine's rank does."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rank_cls = ray.remote(_Rank)
    actors: list[_RankHandle] = []
    for i, b in enumerate(bundle_list):
        extra = {k: v for k, v in b.items() if k not in ("CPU", "GPU")} or None
        handle = rank_cls.options(
            num_cpus=b.get("CPU", 0),
            num_gpus=b.get("GPU", 0),
            resources=extra,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i
            ),
        ).remote(i)
        actors.append(cast(_RankHandle, handle))  # the boundary: Ray's handle, as _RankHandle declares it
    return actors


def _measure_allreduce(
    actors: Sequence[_RankHandle],
    result: PreflightResult,
    tensor_bytes: int,
    iters: int,
    timeout: float,
    collective_timeout: float,
) -> None:
    """All-reduce across every rank from rank 0's host: correct sum, time, bus bandwidth."""
    ranks, world = result.ranks, len(actors)
    master_ip = ranks[0].node_ip
    port = _get([actors[0].free_port.remote()], timeout, "rank 0 gave no port", "rank 0 port")[0]
    numel = max(1, tensor_bytes // 4)
    ifname = _get([actors[0].nic.remote()], timeout, "rank 0 gave no NIC", "rank 0 NIC")[0]
    # Gloo/NCCL timeouts alone can hang past the bound; the outer ray.wait enforces it.
    refs = [a.allreduce.remote(world, master_ip, port, numel, iters, collective_timeout) for a in actors]
    outs = _get(
        refs,
        collective_timeout + 30,
        timeout_hint(world, [r.node_ip for r in ranks], collective_timeout + 30, ifname, "all-reduce"),
        f"all-reduce across {world} ranks failed (NIC {ifname or 'unset'})",
    )
    want = expected_sum(world)
    result.backend = outs[0]["backend"]
    result.expected_sum = want
    result.observed_sum = outs[0]["min"]
    result.allreduce_ok = all(o["min"] == want and o["max"] == want for o in outs)
    if not result.allreduce_ok:
        seen = sorted({o["min"] for o in outs} | {o["max"] for o in outs})
        result.problems.append(f"all-reduce sum wrong: expected {want:g} on every rank, saw {seen}")
    result.tensor_bytes = numel * 4
    result.seconds = max(o["seconds"] for o in outs)
    result.algbw_gbps, result.busbw_gbps = bus_bandwidth(result.tensor_bytes, result.seconds, world)


def _get(refs: Sequence[ObjectRef[T]], timeout: float, on_timeout: str, on_error: str) -> list[T]:
    """ray.get with a bound; every failure becomes one line."""
    ready, _ = ray_api.wait(refs, num_returns=len(refs), timeout=timeout)
    if len(ready) < len(refs):
        raise PreflightError(on_timeout)
    try:
        return ray_api.get(refs)
    except Exception as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise PreflightError(f"{on_error}: {lines[-1] if lines else type(e).__name__}") from None
