"""`run_checks(inputs, clients)`: plain data in, a list of `Check` out, in the order a user fixes
things; the exit code and JSON of a run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from infra.account_check.capacity import check_capacity_block, check_capacity_reservation
from infra.account_check.compute import check_ami, check_gpu_facts, check_offered, check_quota
from infra.account_check.model import Check, Clients, PreflightInputs
from infra.account_check.weights import check_weights


def run_checks(inp: PreflightInputs, clients: Clients, now: dt.datetime | None = None) -> list[Check]:
    steps: list[Callable[[], Check]] = [
        lambda: check_offered(clients.ec2, inp.instance_type, inp.availability_zone),
        lambda: check_offered(
            clients.ec2, inp.head_instance_type, inp.availability_zone, "head-type-offered"
        ),
        lambda: check_gpu_facts(clients.ec2, inp),
        lambda: check_quota(
            clients,
            "gpu-quota",
            inp.quota_family,
            inp.spot,
            inp.vcpus_needed,
            f"{inp.workers} x {inp.instance_type}" + (" (spot)" if inp.spot else ""),
        ),
        # The head is a CPU instance (Standard quota); a miss there rarely blocks, so it only warns.
        lambda: check_quota(
            clients,
            "head-quota",
            inp.head_quota_family,
            False,
            inp.head_vcpus,
            f"head {inp.head_instance_type}",
            severity="warn",
        ),
        lambda: check_ami(clients.ec2, inp),
        lambda: check_weights(clients.s3, inp),
    ]
    if inp.capacity_reservation_id:
        steps.append(lambda: check_capacity_reservation(clients.ec2, inp))
    if inp.capacity_block_id:
        steps.append(lambda: check_capacity_block(clients.ec2, inp, now))
    return [step() for step in steps]


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings never fail), else 1."""
    return 1 if any(c.status == "fail" for c in checks) else 0


def to_json(checks: Iterable[Check]) -> dict[str, list[dict[str, str]]]:
    return {"checks": [c.to_dict() for c in checks]}
