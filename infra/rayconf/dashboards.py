"""Grafana dashboards as files, generated from the installed Ray package at build time.

Ray ships its dashboards as Python panel definitions plus base JSON, and generates the Grafana
JSON with `ray.dashboard.modules.metrics.grafana_dashboard_factory` (the head writes the same
files into its session dir). We call the same factory, so the Serve, Serve LLM and Ray core
dashboards are exactly the installed Ray's and follow every Ray upgrade; `tests/test_dashboards.py`
checks them against it. The GPU dashboard (NVIDIA DCGM exporter's metrics) is built with Ray's
own panel model and factory, so it has the same shape, variables and datasource.

`write(out_dir, datasource)` lays out a Grafana provisioning tree:
  provisioning/dashboards/llmfleet.yaml   a file provider over dashboards/
  provisioning/datasources/llmfleet.yaml  the Prometheus datasource (local, or AMP with SigV4)
  dashboards/*.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from infra.catalog.images import image_ref

# file name -> name of the generator in Ray's grafana_dashboard_factory
RAY_DASHBOARDS = {
    "ray-serve-llm.json": "generate_serve_llm_grafana_dashboard",
    "ray-serve.json": "generate_serve_grafana_dashboard",
    "ray-serve-deployment.json": "generate_serve_deployment_grafana_dashboard",
    "ray-default.json": "generate_default_grafana_dashboard",
}
GPU_FILE = "gpu-dcgm.json"
GPU_UID = "llmfleet-gpu-dcgm"
DATASOURCE_NAME = "Prometheus"

# DCGM exporter's default counters (dcgm-exporter's default-counters.csv), per GPU: label `gpu`,
# `Hostname`, `modelName`. (metric, title, unit, description)
DCGM_PANELS = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization", "percent", "Fraction of time a kernel ran."),
    ("DCGM_FI_DEV_FB_USED", "GPU memory used", "decmbytes", "Frame buffer in use (MiB)."),
    ("DCGM_FI_DEV_FB_FREE", "GPU memory free", "decmbytes", "Frame buffer free (MiB)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature", "celsius", "Die temperature."),
    ("DCGM_FI_DEV_POWER_USAGE", "GPU power draw", "watt", "Board power."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "GPU memory bandwidth utilization", "percent", "Memory copy engine busy."),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock", "hertz", "Streaming multiprocessor clock (MHz)."),
    ("DCGM_FI_DEV_XID_ERRORS", "XID errors", "short", "Last XID error code (0 = none)."),
)


def _factory():
    from ray.dashboard.modules.metrics import grafana_dashboard_factory

    return grafana_dashboard_factory


def ray_dashboards() -> dict[str, dict]:
    """The installed Ray's dashboards, by file name (Ray's own generator output, parsed)."""
    f = _factory()
    return {name: json.loads(getattr(f, gen)()[0]) for name, gen in RAY_DASHBOARDS.items()}


def gpu_dashboard() -> dict:
    """Per-GPU DCGM figures through Ray's panel model and factory (Ray's core base JSON), with
    DCGM's own host variable in place of Ray's session/node variables."""
    from ray.dashboard.modules.metrics.dashboards.common import DashboardConfig, Panel, Target

    panels = [
        Panel(
            id=i + 1,
            title=title,
            description=desc,
            unit=unit,
            targets=[
                Target(expr=f'{metric}{{{{Hostname=~"$Hostname"}}}}', legend="{{Hostname}} GPU {{gpu}}")
            ],
            stack=False,
            fill=0,
        )
        for i, (metric, title, unit, desc) in enumerate(DCGM_PANELS)
    ]
    cfg = DashboardConfig(
        name="LLMFLEET_GPU",
        default_uid=GPU_UID,
        panels=panels,
        standard_global_filters=[],
        base_json_file_name="default_grafana_dashboard_base.json",
    )
    doc = json.loads(_factory()._generate_grafana_dashboard(cfg)[0])
    doc["title"] = "GPUs (NVIDIA DCGM)"
    keep = [v for v in doc["templating"]["list"] if v.get("name") == "datasource"]
    host = {
        "name": "Hostname",
        "label": "Host",
        "type": "query",
        "datasource": "${datasource}",
        "definition": "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)",
        "query": {"query": "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)", "refId": "Hostname"},
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
    }
    doc["templating"]["list"] = [*keep, host]
    return doc


def dashboards() -> dict[str, dict]:
    return {**ray_dashboards(), GPU_FILE: gpu_dashboard()}


@dataclass(frozen=True)
class Datasource:
    url: str  # Prometheus base URL (AMP: the workspace's prometheus endpoint)
    sigv4_region: str | None = None  # AMP: sign queries with the caller's AWS credentials


def datasource_doc(ds: Datasource) -> dict:
    entry: dict = {
        "name": DATASOURCE_NAME,
        "type": "prometheus",
        "access": "proxy",
        "url": ds.url.rstrip("/"),
        "isDefault": True,
        "editable": False,
    }
    if ds.sigv4_region:
        # Grafana's SigV4 auth with the AWS SDK's default credential chain (env, profile, role).
        entry["jsonData"] = {"sigV4Auth": True, "sigV4AuthType": "default", "sigV4Region": ds.sigv4_region}
    return {"apiVersion": 1, "datasources": [entry]}


def provider_doc(dashboards_dir: str) -> dict:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "llmfleet",
                "folder": "llmfleet",
                "type": "file",
                "allowUiUpdates": False,
                "options": {"path": dashboards_dir},
            }
        ],
    }


def write(out_dir: Path, ds: Datasource, container_dir: str = "/etc/grafana/llmfleet") -> list[Path]:
    """The provisioning tree under out_dir (mounted at container_dir in Grafana's container)."""
    out_dir = Path(out_dir)
    written = []
    for sub, doc in (
        ("provisioning/dashboards/llmfleet.yaml", provider_doc(f"{container_dir}/dashboards")),
        ("provisioning/datasources/llmfleet.yaml", datasource_doc(ds)),
    ):
        p = out_dir / sub
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
        written.append(p)
    for name, doc in dashboards().items():
        p = out_dir / "dashboards" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(p)
    return written


def grafana_command(out_dir: str, aws_region: str | None = None, port: int = 3000) -> str:
    """docker run of Grafana over the provisioning tree (on the operator's machine)."""
    # docker -v wants an absolute host path; "$PWD" keeps the command copy-pasteable
    mount = out_dir if out_dir.startswith("/") else f'"$PWD/{out_dir.removeprefix("./")}"'
    env = (
        "-e AWS_PROFILE -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN "
        if aws_region
        else ""
    )
    if aws_region:
        env += f"-e AWS_REGION={aws_region} -e GF_AUTH_SIGV4_AUTH_ENABLED=true -v ~/.aws:/usr/share/grafana/.aws:ro "
    return (
        f"docker run --rm -p 127.0.0.1:{port}:3000 {env}"
        f"-e GF_PATHS_PROVISIONING=/etc/grafana/llmfleet/provisioning "
        f"-v {mount}:/etc/grafana/llmfleet:ro {image_ref('grafana')}"
    )
