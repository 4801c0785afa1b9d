"""A real `moto_server` process on 127.0.0.1 for tests, started and stopped by the tests themselves.

Use `MotoServer` as a context manager (or through a pytest fixture that wraps it):

    with MotoServer(amis=[...]) as moto:
        ec2 = moto.client("ec2")
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

REGION = "us-east-1"
DUMMY_CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server not found: install moto[server]")
    return [found]


class MotoServer:
    """moto_server bound to loopback on a free port.

    `amis` seeds EC2 images through moto's own MOTO_AMIS_PATH (rows in moto's amis.json shape);
    moto marks every seeded image as owned by "amazon", as the real public AMIs are.
    """

    def __init__(self, amis: list[dict[str, Any]] | None = None):
        self.amis = amis
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, **DUMMY_CREDS}
        env.pop("AWS_ENDPOINT_URL", None)
        self._tmp = tempfile.TemporaryDirectory(prefix="llmfleet-moto-")
        if self.amis is not None:
            path = Path(self._tmp.name) / "amis.json"
            path.write_text(json.dumps(self.amis))
            env["MOTO_AMIS_PATH"] = str(path)
        log = open(Path(self._tmp.name) / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(
            [*_moto_server_cmd(), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not answer within 30 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    def client(self, service: str, region: str = REGION) -> Any:
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dlami(ami_id: str, name: str, creation_date: str) -> dict[str, Any]:
    """One image row in moto's amis.json shape."""
    return {
        "ami_id": ami_id,
        "state": "available",
        "public": True,
        "owner_id": "898082745236",
        "image_location": f"amazon/{name}",
        "root_device_type": "ebs",
        "root_device_name": "/dev/sda1",
        "description": name,
        "image_type": "machine",
        "platform": None,
        "architecture": "x86_64",
        "name": name,
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "creation_date": creation_date,
    }
