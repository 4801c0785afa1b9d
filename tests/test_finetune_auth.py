"""`llmfleet finetune --stack`'s Jobs/State API calls carry the stack's Ray cluster token.

A stack's hosts run Ray 2.60 token auth (RAY_AUTH_MODE=token, infra/boot/cloud_init.py), so its
dashboard answers 401/403 to a client without the token. The dashboard here is an aiohttp app
behind Ray's own token middleware (ray._private.authentication, the one Ray's dashboard mounts),
started with RAY_AUTH_MODE=token: the acceptance is Ray's. The routes behind it only answer what
the commands read (the version handshake, a job's logs, the node list). The token comes from SSM
(a moto server) as the stack outputs name it, and never appears in argv or a repr.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infra.cli import app
from infra.finetune_job import FinetuneJobError, Target, client, ray_token, trainer_slots
from infra.stack.outputs import StackOutputs
from tests.moto_fixtures import DUMMY_CREDS, MotoServer

runner = CliRunner()
JOB = "llmfleet-lora-blue-0a1b2c"
LOG = 'llmfleet-train {"step":1,"steps":2,"loss":5.5,"tokens_per_s":100.0,"eta_s":1.0}\n'

SERVER = """
import json, sys
import aiohttp
from aiohttp import web
from ray._private.authentication.http_token_authentication import get_token_auth_middleware

async def version(request):
    return web.json_response({"version": "4", "ray_version": "2.60.0", "ray_commit": "x", "session_name": "s"})

async def logs(request):
    return web.json_response({"logs": LOG})

async def nodes(request):
    node = {"node_id": "n1", "node_ip": "10.0.0.3", "is_head_node": False, "state": "ALIVE", "state_message": None,
            "node_name": "n1", "resources_total": {"CPU": 1.0, "llmfleet_train": 1.0}, "labels": {},
            "start_time_ms": 1, "end_time_ms": None}
    result = {"total": 1, "num_after_truncation": 1, "num_filtered": 1, "result": [node],
              "partial_failure_warning": "", "warnings": None}
    return web.json_response({"result": True, "msg": "", "data": {"result": result}})

app = web.Application(middlewares=[get_token_auth_middleware(aiohttp)])
app.router.add_get("/api/version", version)
app.router.add_get("/api/jobs/{job}/logs", logs)
app.router.add_get("/api/v0/nodes", nodes)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(url, token): an HTTP server behind Ray's token middleware, in token mode."""
    token = secrets.token_urlsafe(24)
    script = tmp_path_factory.mktemp("dash") / "dash.py"
    script.write_text(f"LOG = {LOG!r}\n" + SERVER)
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline and proc.stdout.readline().strip() != "ready":
            assert proc.poll() is None, "the dashboard stand-in exited"
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_jobs_and_state_clients_send_the_token(dashboard):
    url, token = dashboard
    with pytest.raises(FinetuneJobError, match=r"Authentication required: .*Missing authentication token"):
        client(url)
    with pytest.raises(FinetuneJobError, match=r"Authentication failed: .*Invalid authentication token"):
        client(url, token + "x")
    assert client(url, token).get_job_logs(JOB) == LOG
    assert trainer_slots(url, token) == 1.0
    with pytest.raises(FinetuneJobError, match="not reachable"):
        trainer_slots(url)
    t = Target("stack dev", url, "/opt/m", "m", "s3://b/a/", "python3", token=token)
    assert token not in repr(t)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    raw = json.loads(Path("tests/data/stack_outputs_prod.json").read_text())
    p = tmp_path / "outputs.json"
    p.write_text(json.dumps({**raw, "ray_token_parameter": "/llmfleet/dev/ray-auth-token"}))
    return p


def test_finetune_logs_on_a_stack_reads_the_token_from_ssm(dashboard, outputs: Path):
    url, token = dashboard
    argv = ["finetune", "logs", JOB, "--stack", "dev", "--dashboard", url, "--outputs", str(outputs)]
    with MotoServer() as moto:
        ssm = moto.client("ssm")
        ssm.put_parameter(Name="/llmfleet/dev/ray-auth-token", Value=token, Type="SecureString")
        env = {**DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url}
        res = runner.invoke(app, argv, env=env)
        assert res.exit_code == 0, res.output
        assert res.stdout == LOG and token not in " ".join(argv)
        # a token the cluster does not hold: refused by Ray's middleware, one line
        ssm.put_parameter(
            Name="/llmfleet/dev/ray-auth-token", Value="not-it", Type="SecureString", Overwrite=True
        )
        res = runner.invoke(app, argv, env=env)
        assert res.exit_code == 1
        assert res.stderr.strip().splitlines() == [
            f"error: Ray's dashboard at {url}: Authentication failed: Forbidden: Invalid authentication token "
            "(the stack's Ray cluster token)"
        ]
        ssm.delete_parameter(Name="/llmfleet/dev/ray-auth-token")
        res = runner.invoke(app, argv, env=env)
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
        assert res.stderr.startswith(
            "error: reading the Ray cluster token /llmfleet/dev/ray-auth-token from SSM: "
        ) and ("ParameterNotFound" in res.stderr)


def test_an_existing_hosts_stack_needs_its_secret_output():
    raw = json.loads(Path("tests/data/stack_outputs_prod.json").read_text())
    own = {**raw, "provider": "existing"}
    with pytest.raises(FinetuneJobError, match=r"'ray_auth_token' is hidden: .*--show-secrets"):
        ray_token(StackOutputs.parse({**own, "ray_auth_token": "[secret]"}), None)
    assert ray_token(StackOutputs.parse({**own, "ray_auth_token": "tok"}), None) == "tok"
    with pytest.raises(FinetuneJobError, match="'ray_token_parameter' is missing"):
        ray_token(StackOutputs.parse({k: v for k, v in raw.items() if k != "ray_token_parameter"}), None)
