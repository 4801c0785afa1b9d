"""Cold start: how long from `pulumi up` booting a GPU worker to its first token, term by term.

Every worker runs the same sequence (infra/boot/cloud_init.py), all workers in parallel, so the
cluster is ready when one worker is:

1. instance boot: request -> user data running;
2. image pull: compressed image / min(NIC, docker's parallel layer streams x single-flow cap);
3. weight staging: the checkpoint / min(S3 per instance, NVMe write, NIC). S3 per instance is
   itself min(concurrent requests x per-connection cap, the per-instance S3 maximum, the
   client's own throughput); every worker stages the whole checkpoint (aws s3 sync of the
   prefix);
4. engine load: the worker's share of the checkpoint (its pipeline stage) from NVMe into GPU
   memory;
5. compile and CUDA-graph capture;
6. the first token: the time to first token at the planned input length.

The figures live in catalog/coldstart.yaml, each with its source; this module only does the
arithmetic and names the term that limits each rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from infra.catalog import InstanceType, Model, load_catalog
from infra.constants import S3_MAX_CONCURRENT_REQUESTS
from infra.stack.units import fmt_gib

GB = 1e9
GIB = 1024**3


@dataclass(frozen=True)
class Term:
    name: str
    seconds: float
    detail: str  # the arithmetic, with the limiting figure
    source: str


@dataclass(frozen=True)
class ColdStart:
    instance_type: str
    total_s: float
    terms: tuple[Term, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_type": self.instance_type,
            "total_s": round(self.total_s, 1),
            "terms": [{**asdict(t), "seconds": round(t.seconds, 1)} for t in self.terms],
        }

    def usd(self, cluster_usd_per_hour: float) -> float:
        """What one cold start costs: the whole cluster is billed while it boots."""
        return self.total_s / 3600 * cluster_usd_per_hour


def _fig(key: str) -> tuple[float, str]:
    row = load_catalog().coldstart[key]
    return row.value, row.source


def _limit(rates: dict[str, float]) -> tuple[str, float]:
    """The slowest of several rates (bits/s): (its name, its value)."""
    name = min(rates, key=lambda k: rates[k])
    return name, rates[name]


def _gbps(bits_per_s: float) -> str:
    return f"{bits_per_s / 1e9:.1f} Gbps"


def estimate(model: Model, instance: InstanceType, pipeline_parallel: int, ttft_s: float) -> ColdStart:
    """Boot -> first token on `instance` for `model` split into `pipeline_parallel` stages."""
    nic = instance.network_gbps * 1e9
    terms: list[Term] = []

    boot, boot_src = _fig("instance_boot_s")
    terms.append(Term("instance boot", boot, f"{boot:.0f} s to user data", boot_src))

    image_gb, image_src = _fig("image_compressed_gb")
    streams, streams_src = _fig("image_pull_streams")
    flow, flow_src = _fig("single_flow_gbps")
    name, rate = _limit({"NIC": nic, f"{streams:.0f} layer streams x {flow:.0f} Gbps": streams * flow * 1e9})
    terms.append(
        Term(
            "image pull",
            image_gb * GB * 8 / rate,
            f"{image_gb:.2f} GB / {_gbps(rate)} ({name})",
            f"{image_src}; {streams_src}; {flow_src}",
        )
    )

    conn, conn_src = _fig("s3_connection_gbps")
    s3_max, s3_max_src = _fig("s3_instance_max_gbps")
    client, client_src = _fig("s3_client_gbps")
    disk, disk_src = _fig("nvme_write_mbps_per_disk")
    rates = {
        f"{S3_MAX_CONCURRENT_REQUESTS} S3 connections x {conn:.0f} Gbps": S3_MAX_CONCURRENT_REQUESTS
        * conn
        * 1e9,
        "S3 per-instance maximum": s3_max * 1e9,
        "aws-cli throughput": client * 1e9,
        "NIC": nic,
    }
    if instance.nvme_disks:
        rates[f"NVMe write ({instance.nvme_disks} disks x {disk:.0f} MB/s)"] = (
            instance.nvme_disks * disk * 1e6 * 8
        )
    name, rate = _limit(rates)
    ckpt = model.checkpoint_gib * GIB
    terms.append(
        Term(
            "weight staging",
            ckpt * 8 / rate,
            f"{fmt_gib(model.checkpoint_gib)} / {_gbps(rate)} ({name})",
            f"{conn_src}; {s3_max_src}; {client_src}; {disk_src}",
        )
    )

    load_rate, load_src = _fig("engine_load_gib_per_s")
    share = model.checkpoint_gib / pipeline_parallel
    terms.append(
        Term(
            "engine load",
            share / load_rate,
            f"{fmt_gib(share)} (1/{pipeline_parallel} of the checkpoint) / {load_rate} GiB/s",
            load_src,
        )
    )

    compile_s, compile_src = _fig("torch_compile_s")
    graphs_s, graphs_src = _fig("cuda_graph_capture_s")
    terms.append(
        Term(
            "compile + CUDA graphs",
            compile_s + graphs_s,
            f"torch.compile {compile_s:.0f} s + graph capture {graphs_s:.0f} s",
            f"{compile_src}; {graphs_src}",
        )
    )
    terms.append(
        Term(
            "first token",
            ttft_s,
            f"TTFT at the planned input length: {ttft_s:.2f} s",
            "infra/stack/perf.py prefill model + the serving path's first-token cost (catalog/serving_path.yaml)",
        )
    )
    return ColdStart(instance.name, sum(t.seconds for t in terms), tuple(terms))


def instance_for(gpu: str, gpus_per_node: int) -> InstanceType | None:
    """The catalog's AWS instance type with `gpus_per_node` x `gpu`, cheapest first."""
    found = [i for i in load_catalog().instances.values() if i.gpu == gpu and i.gpu_count == gpus_per_node]
    return min(found, key=lambda i: i.on_demand_usd_per_hour) if found else None
