"""EC2 Capacity Blocks for ML: what a block is (EC2's answers) and whether it fits the plan.

A Capacity Block is bought up front for a fixed window (1-14 days, or 7-day steps up to 182
days) and appears as a capacity reservation with ReservationType "capacity-block". Workers
launch into it with market type `capacity-block` and the reservation as the target; they must
be in its AZ, and AWS already places a block's instances close together, so they take no
placement group.

- `describe_block(ec2, id)`: the block from `describe_capacity_reservations`.
- `quote_fee(ec2, block)`: what a block of the same type, count and hours costs now, from
  `describe_capacity_block_offerings` (EC2 reports no fee for a block already bought; the fee
  was fixed at purchase at the rate then in effect, so this is a labelled estimate).
- `problems(block, ...)`: the plan's view of the block, pure (preflight's check).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from infra.cost.model import HOURS_PER_MONTH


@dataclass(frozen=True)
class CapacityBlock:
    """What is known about one Capacity Block (from EC2, see below). Any field may
    be None offline; the fee then comes from the snapshot's per-instance-hour rate."""

    reservation_id: str
    instance_type: str | None = None
    availability_zone: str | None = None
    instance_count: int | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    upfront_fee: Decimal | None = None
    fee_source: str = ""
    fee_date: str = ""
    fee_estimate: bool = True

    @property
    def duration_hours(self) -> Decimal | None:
        if self.start is None or self.end is None:
            return None
        return Decimal(str((self.end - self.start).total_seconds())) / 3600

    @property
    def billed_hours(self) -> Decimal:
        """Hours of the block within one 730-hour month: all of a short block, 730 of a long one."""
        d = self.duration_hours
        return HOURS_PER_MONTH if d is None else min(HOURS_PER_MONTH, d)


ENDED = {"expired", "cancelled", "failed", "payment-failed", "unavailable"}


class BlockError(RuntimeError):
    """EC2 does not know the block, or it is not a Capacity Block; str() is one line."""


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class BlockFacts:
    block: CapacityBlock
    state: str
    reservation_type: str
    total: int
    available: int


def describe_block(ec2: Any, reservation_id: str) -> BlockFacts:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[reservation_id])[
            "CapacityReservations"
        ]
    except ClientError as e:
        err = e.response.get("Error", {})
        raise BlockError(
            f"{reservation_id} not found ({err.get('Code', 'Error')}: {err.get('Message', '')})"
        ) from None
    except BotoCoreError as e:
        raise BlockError(f"{reservation_id}: cannot describe it ({e})") from None
    if not found:
        raise BlockError(f"{reservation_id} not found")
    cr = found[0]
    block = CapacityBlock(
        reservation_id=reservation_id,
        instance_type=cr.get("InstanceType"),
        availability_zone=cr.get("AvailabilityZone"),
        instance_count=int(cr.get("TotalInstanceCount", 0)) or None,
        start=_utc(cr.get("StartDate")),
        end=_utc(cr.get("EndDate")),
    )
    return BlockFacts(
        block,
        str(cr.get("State", "")),
        str(cr.get("ReservationType", "default")),
        int(cr.get("TotalInstanceCount", 0)),
        int(cr.get("AvailableInstanceCount", 0)),
    )


def offerings(
    ec2: Any,
    instance_type: str,
    count: int,
    hours: int,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {
        "InstanceType": instance_type,
        "InstanceCount": count,
        "CapacityDurationHours": hours,
    }
    if start is not None:
        kwargs["StartDateRange"] = start
    if end is not None:
        kwargs["EndDateRange"] = end
    return list(ec2.describe_capacity_block_offerings(**kwargs).get("CapacityBlockOfferings", []))


def quote_fee(ec2: Any, block: CapacityBlock, today: str) -> CapacityBlock:
    """The block with the upfront fee of the offering closest to it: same type, count and hours,
    in its AZ, starting when it starts if EC2 still offers that window."""
    hours = block.duration_hours
    if not (block.instance_type and block.instance_count and hours):
        return block
    found = offerings(ec2, block.instance_type, block.instance_count, int(hours), block.start, block.end)
    in_az = [
        o
        for o in found
        if not block.availability_zone or o.get("AvailabilityZone") == block.availability_zone
    ]
    same_start = [o for o in in_az if _utc(o.get("StartDate")) == block.start]
    best = (same_start or in_az or found or [None])[0]
    if best is None or best.get("UpfrontFee") in (None, ""):
        return block
    if str(best.get("CurrencyCode", "USD")) != "USD":
        return block
    source = (
        f"EC2 describe_capacity_block_offerings ({best.get('CapacityBlockOfferingId', '?')}: "
        f"{block.instance_count} x {block.instance_type}, {int(hours)} h, quoted {today}; "
        "the fee paid was fixed at purchase)"
    )
    return replace(
        block,
        upfront_fee=Decimal(str(best["UpfrontFee"])),
        fee_source=source,
        fee_date=today,
        fee_estimate=True,
    )


# --- the plan's view -----------------------------------------------------------------------------


def problems(facts: BlockFacts, instance_type: str, availability_zone: str | None, workers: int) -> list[str]:
    """What stops the plan's workers from running in this block (empty = nothing)."""
    b = facts.block
    out = []
    if facts.reservation_type != "capacity-block":
        out.append(
            "it is an On-Demand Capacity Reservation, not a Capacity Block (use llmfleet:capacityReservationId)"
        )
    if b.instance_type != instance_type:
        out.append(f"it reserves {b.instance_type}, the plan uses {instance_type}")
    if availability_zone and b.availability_zone != availability_zone:
        out.append(f"it is in {b.availability_zone}, the plan uses {availability_zone}")
    if facts.total < workers:
        out.append(f"it holds {facts.total} instances, the plan needs {workers}")
    if facts.state in ENDED:
        out.append(f"its state is {facts.state}")
    return out


def timing(facts: BlockFacts, now: dt.datetime) -> tuple[Literal["fail", "warn", "pass"], str]:
    """("fail" | "warn" | "pass", why) for the block's window seen from `now`."""
    b = facts.block
    if b.end is not None and b.end <= now:
        return "fail", f"it ended at {b.end:%Y-%m-%d %H:%M} UTC"
    if b.start is not None and b.start > now:
        wait = (b.start - now).total_seconds() / 3600
        return "warn", (
            f"it starts at {b.start:%Y-%m-%d %H:%M} UTC (in {wait:.0f} h): workers cannot launch before "
            "then, run `pulumi up` after it starts"
        )
    if b.end is not None:
        left = (b.end - now).total_seconds() / 3600
        if left < 24:
            return (
                "warn",
                f"it ends at {b.end:%Y-%m-%d %H:%M} UTC (in {left:.0f} h); EC2 then terminates its instances",
            )
        return "pass", f"active until {b.end:%Y-%m-%d %H:%M} UTC ({left:.0f} h left)"
    return "pass", "active"
