"""Reaching a running Ray cluster: addresses, the head's port, auth, and `ray.init` as a driver.

Shared by the node commands and the preflight (which connects as a driver), so neither imports
the other. Stdlib at import; ray only inside connect().
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from ray_cluster.contract import GCS_PORT


class NodeError(RuntimeError):
    """A one-line failure; the CLI prints it and exits non-zero."""


def auth_env(environ: Mapping[str, str]) -> dict[str, str]:
    """RAY_AUTH_MODE made explicit, so every node and driver agrees.

    Left unset, Ray 2.60 makes a token on the head's disk that no other host has, and
    workers cannot join. So: token mode when a token is supplied (RAY_AUTH_TOKEN from SSM, or
    RAY_AUTH_TOKEN_PATH) on every node; else disabled, relying on the security group that
    keeps Ray's ports inside the cluster.
    """
    if environ.get("RAY_AUTH_MODE"):
        return {"RAY_AUTH_MODE": environ["RAY_AUTH_MODE"]}
    if environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH"):
        return {"RAY_AUTH_MODE": "token"}
    return {"RAY_AUTH_MODE": "disabled"}


def split_address(address: str, default_port: int = GCS_PORT) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    try:
        return host, int(port)
    except ValueError:
        raise NodeError(f"--address {address!r} is not HOST:PORT") from None


# ---------------------------------------------------------------- waiting (pure over injected clocks)


def wait_for_tcp(
    host: str,
    port: int,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    deadline = clock() + timeout
    last = "no attempt"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.5, interval))):
                return
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
        if clock() >= deadline:
            raise NodeError(f"head {host}:{port} did not answer within {timeout:g} s (last error: {last})")
        sleep(interval)


def connect(address: str, wait: float = 10.0) -> None:
    """ray.init against a running cluster; a dead address fails in `wait` s instead of hanging."""
    import logging

    import ray

    if address not in ("auto", "") and not address.startswith("ray://"):
        host, port = split_address(address)
        wait_for_tcp(host, port, wait)
    # The driver must agree with the nodes on auth; ray.init reads it from os.environ.
    os.environ.update(auth_env(os.environ))
    if ray.is_initialized():
        current = str(ray.get_runtime_context().gcs_address)  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType] - untyped in Ray
        if address in ("auto", "") or current == address:
            return
        # This process is attached to another cluster (an earlier caller's): answering from
        # that one would report its nodes and GPUs as this address's.
        ray.shutdown()  # pyright: ignore[reportUnknownMemberType] - Ray's own annotations are partial
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)  # pyright: ignore[reportUnknownMemberType]
