"""The local cluster's Prometheus: Debian's `prometheus` binary, run inside the head host (as a
Prometheus on the head would run in production), scraping every host's Ray metrics agent
through Ray's own service-discovery file, which the head rewrites as nodes join and leave.

Lifecycle: `start` after the head is up (its temp dir, where Ray writes the file, exists),
`stop` on `local down`; the TSDB lives under the state dir and goes with the cluster. The
process is started with `run_in_host`, so it carries the head's host tag and `hosts.teardown`
finds it even when the state file is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.local import hosts
from infra.local.hosts import Host
from infra.local.layout import LocalError, Ports
from infra.local.state import LocalState, PrometheusRecord

BINARY = "prometheus"  # Debian's package: /usr/bin/prometheus
SD_FILE = "prom_metrics_service_discovery.json"  # Ray writes it in the head's temp dir
NETNS_PORT = 9090  # a namespace has its own port space: Prometheus' usual port
# Ray's metrics agents refresh their figures every ~10 s (RAY_metrics_report_interval_ms);
# scraping twice as often sees each refresh within 5 s.
SCRAPE_INTERVAL = "5s"
RETENTION = "2d"  # a local cluster lives hours, not weeks
JOB = "ray"
INSTALL_HINT = "install Debian's prometheus package (scripts/system-deps.sh does, as root)"


def port_for(mode: str, ports: Ports) -> int:
    """netns: 9090 in the head's own namespace; loopback hosts share one port space, so the
    port sits next to the cluster's GCS and dashboard ports (layout.plan_ports' block)."""
    return NETNS_PORT if mode == "netns" else ports.dashboard + 1


def url_for(mode: str, head: Host, ports: Ports) -> str:
    return f"http://{head.ip}:{port_for(mode, ports)}"


def data_dir(sd: Path, name: str) -> Path:
    return sd / "prometheus" / name


def config_doc(temp_dir: str, cluster: str) -> dict:
    """prometheus.yml: one job over Ray's service-discovery file (every node's metrics agent)."""
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"llmfleet_cluster": cluster},
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "file_sd_configs": [
                    {"files": [str(Path(temp_dir) / SD_FILE)], "refresh_interval": SCRAPE_INTERVAL}
                ],
            }
        ],
    }


def argv(config: Path, data: Path, ip: str, port: int) -> list[str]:
    return [
        BINARY,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address={ip}:{port}",
    ]


def _ready(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start(
    st: LocalState, head: Host, ports: Ports, sd: Path, log: Path, timeout: float = 60.0
) -> PrometheusRecord:
    """Start Prometheus in the head host; returns its pid, url, config, data dir and log."""
    if shutil.which(BINARY) is None:
        raise LocalError(f"{BINARY} not found in PATH; {INSTALL_HINT}")
    data = data_dir(sd, st.name)
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    config = data / "prometheus.yml"
    config.write_text(yaml.safe_dump(config_doc(st.temp_dir, st.name), sort_keys=False))
    port = port_for(st.mode, ports)
    url = url_for(st.mode, head, ports)
    with open(log, "ab") as out:
        proc = hosts.run_in_host(
            head,
            argv(config, data / "tsdb", head.ip, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = PrometheusRecord(pid=proc.pid, url=url, config=str(config), data_dir=str(data), log=str(log))
    deadline = time.monotonic() + timeout
    while not _ready(url):
        if proc.poll() is not None:
            raise LocalError(f"prometheus exited with {proc.returncode}; log {log}: {_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise LocalError(f"prometheus not ready at {url} within {timeout:g} s; log {log}")
        time.sleep(0.3)
    return info


def start_if_installed(st: LocalState, head: Host, ports: Ports, sd: Path, log: Path) -> PrometheusRecord:
    """`start`, or, without the binary (not root, no apt), a record of only why (`missing`): the cluster still
    serves, and `local status` says why it has no live figures."""
    if shutil.which(BINARY) is None:
        return PrometheusRecord(missing=f"{BINARY} not found in PATH; {INSTALL_HINT}")
    return start(st, head, ports, sd, log)


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def stop(st: LocalState | None, sd: Path, name: str) -> list[str]:
    """SIGTERM (Prometheus flushes its head block), SIGKILL after 10 s; remove the TSDB."""
    removed: list[str] = []
    pid = st.prometheus.pid if st is not None and st.prometheus is not None else None
    if pid is not None:
        if _is_prometheus(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _is_prometheus(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_prometheus(pid):
                os.kill(pid, signal.SIGKILL)
            removed.append(f"prometheus pid {pid}")
    data = data_dir(sd, name)
    if data.exists():
        shutil.rmtree(data, ignore_errors=True)
        removed.append(f"prometheus data {data}")
    parent = data.parent
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
    return removed


def _is_prometheus(pid: int) -> bool:
    """Alive and still Prometheus (a pid from an old state file may be reused by then)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == BINARY and stat.rsplit(")", 1)[1].split()[0] != "Z"


class PromError(RuntimeError):
    """A Prometheus HTTP API call failed: one line."""


Fetch = Callable[[str, float], Any]


def fetch_json(url: str, timeout: float) -> Any:
    """GET url -> its JSON document (plain HTTP: the local Prometheus). Another `Fetch` (the
    stack's AMP workspace, SigV4-signed: infra/status/amp.py) goes through the same queries."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            body = json.loads(body).get("error", body)
        except ValueError:
            pass
        raise PromError(f"HTTP {e.code}: {body}") from None
    except OSError as e:
        raise PromError(f"{url.split('?', 1)[0]}: {e}") from None


def query(url: str, promql: str, timeout: float = 5.0, fetch: Fetch | None = None) -> list[dict]:
    """Instant query through Prometheus' HTTP API: [{"metric": {labels}, "value": float}]."""
    q = urllib.parse.urlencode({"query": promql})
    try:
        doc = (fetch or fetch_json)(f"{url}/api/v1/query?{q}", timeout)
    except PromError as e:
        raise PromError(f"{promql}: {e}" if str(e).startswith("HTTP") else str(e)) from None
    if doc.get("status") != "success":
        raise PromError(f"{promql}: {doc.get('error', doc)}")
    data = doc["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": float(data["result"][1])}]
    return [{"metric": s["metric"], "value": float(s["value"][1])} for s in data["result"]]


def scalar(url: str, promql: str, timeout: float = 5.0, fetch: Fetch | None = None) -> float | None:
    """One number, or None when the query has no series (nothing exported yet)."""
    rows = query(url, promql, timeout, fetch)
    if not rows:
        return None
    v = rows[0]["value"]
    return None if v != v else v  # NaN: e.g. a quantile of no observations


def targets(url: str, timeout: float = 5.0, fetch: Fetch | None = None) -> list[dict]:
    """The active scrape targets: [{"instance", "health", "last_error"}]."""
    doc = (fetch or fetch_json)(f"{url}/api/v1/targets?state=active", timeout)
    return [
        {
            "instance": t["labels"].get("instance", ""),
            "health": t["health"],
            "last_error": t.get("lastError", ""),
        }
        for t in doc["data"]["activeTargets"]
    ]
