"""`run_checks(inputs, clients)`: plain data in, a list of `Check` out, in the order a user fixes
things; the exit code and JSON of a run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from infra.account_check import model
from infra.account_check.capacity import check_capacity_block, check_capacity_reservation
from infra.account_check.compute import check_ami, check_gpu_facts, check_offered, check_quota
from infra.account_check.model import Check, Clients, PreflightInputs
from infra.account_check.weights import check_weights
from infra.stack.config import AwsStackConfig, StackConfig


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


def aws_account_checks(cfg: StackConfig, clients: Clients | None = None) -> list[Check]:
    """provider aws: is the GPU type offered, the quota there, the AMI, the weights, the capacity
    (clients default to plain boto3 clients in the stack's region)."""
    if not isinstance(cfg, AwsStackConfig):  # PROVIDERS picked the model by llmfleet:provider
        raise TypeError(f"provider {cfg.provider!r}: not an AwsStackConfig")
    # by module: tests put moto's clients and a sized upload behind these two
    return run_checks(model.inputs_for_stack(cfg), clients or model.make_clients(cfg.region))


# llmfleet:provider -> what `llmfleet preflight` checks in its account before anything is
# created; None: nothing to ask an account (hosts you own are reached over SSH by the program).
CHECKS: dict[str, Callable[[StackConfig, Clients | None], list[Check]] | None] = {
    "aws": aws_account_checks,
    "existing": None,
}
