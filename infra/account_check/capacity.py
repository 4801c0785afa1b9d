"""Reserved capacity: the capacity reservation or Capacity Block the workers launch into exists,
is active for the stack's type and AZ, and holds the fleet."""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.account_check.model import Check, PreflightInputs, _err
from infra.cost import capacity_block as cb


def check_capacity_reservation(ec2: Any, inp: PreflightInputs) -> Check:
    name = "capacity-reservation"
    rid = inp.capacity_reservation_id
    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[rid])["CapacityReservations"]
    except (ClientError, BotoCoreError) as e:
        return Check(
            name, "fail", f"{rid} not found ({_err(e)}): fix llmfleet:capacityReservationId or remove it"
        )
    if not found:
        return Check(name, "fail", f"{rid} not found: fix llmfleet:capacityReservationId or remove it")
    cr = found[0]
    problems = []
    if cr.get("State") != "active":
        problems.append(f"state is {cr.get('State')}, not active")
    if cr.get("InstanceType") != inp.instance_type:
        problems.append(f"it reserves {cr.get('InstanceType')}, the stack uses {inp.instance_type}")
    if inp.availability_zone and cr.get("AvailabilityZone") != inp.availability_zone:
        problems.append(f"it is in {cr.get('AvailabilityZone')}, the stack uses {inp.availability_zone}")
    free = int(cr.get("AvailableInstanceCount", 0))
    if free < inp.workers:
        problems.append(f"{free} instances free, the stack needs {inp.workers}")
    if problems:
        return Check(name, "fail", f"{rid}: {'; '.join(problems)}: use a matching reservation or remove it")
    return Check(name, "pass", f"{rid}: {free} x {cr['InstanceType']} free in {cr.get('AvailabilityZone')}")


def _offering_hint(ec2: Any, inp: PreflightInputs, hours: int) -> str:
    """One offering that would fit the plan, from describe_capacity_block_offerings, or how to look."""
    look = (
        f"aws ec2 describe-capacity-block-offerings --instance-type {inp.instance_type} "
        f"--instance-count {inp.workers} --capacity-duration-hours {hours}"
    )

    try:
        found = cb.offerings(ec2, inp.instance_type, inp.workers, hours)
    except (ClientError, BotoCoreError):
        return f"find one with `{look}`"
    if inp.availability_zone:
        found = [o for o in found if o.get("AvailabilityZone") == inp.availability_zone] or found
    if not found:
        return f"EC2 offers none now for {inp.workers} x {inp.instance_type} for {hours} h (`{look}`)"
    o = min(found, key=lambda o: float(o.get("UpfrontFee") or "inf"))
    start = o.get("StartDate")
    when = f" from {start:%Y-%m-%d %H:%M} UTC" if hasattr(start, "strftime") else ""
    return (
        f"e.g. offering {o.get('CapacityBlockOfferingId')}: {o.get('InstanceCount')} x {o.get('InstanceType')} "
        f"in {o.get('AvailabilityZone')}{when} for {o.get('CapacityBlockDurationHours')} h, "
        f"{o.get('UpfrontFee')} {o.get('CurrencyCode', 'USD')}"
    )


def check_capacity_block(ec2: Any, inp: PreflightInputs, now: dt.datetime | None = None) -> Check:
    """The Capacity Block against the plan: type, AZ, instance count, and its time window."""

    name = "capacity-block"
    rid = inp.capacity_block_id
    if rid is None:  # run.py asks only when llmfleet:capacityBlockId is set
        return Check(name, "pass", "no llmfleet:capacityBlockId")
    now = now or dt.datetime.now(dt.UTC)
    try:
        facts = cb.describe_block(ec2, rid)
    except cb.BlockError as e:
        return Check(name, "fail", f"{e}: fix llmfleet:capacityBlockId or remove it")
    problems = cb.problems(facts, inp.instance_type, inp.availability_zone, inp.workers)
    status, when = cb.timing(facts, now)
    if status == "fail":
        problems.append(when)
    b = facts.block
    if problems:
        hours = int(b.duration_hours or 24)
        return Check(
            name,
            "fail",
            f"{rid}: {'; '.join(problems)}: buy a block that matches the plan "
            f"({inp.workers} x {inp.instance_type} in {inp.availability_zone or b.availability_zone}); "
            + _offering_hint(ec2, inp, hours),
        )
    window = ""
    if b.start and b.end:
        window = f", {b.start:%Y-%m-%d %H:%M} to {b.end:%Y-%m-%d %H:%M} UTC"
    return Check(
        name,
        status,
        f"{rid}: {facts.total} x {b.instance_type} in {b.availability_zone}{window}; {when}",
    )
