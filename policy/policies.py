"""Every policy of the llmfleet pack, importable without starting the gRPC server.

`policy/__main__.py` serves `POLICIES` to the Pulumi CLI; `policy/runner.py` runs the same
objects offline on the resources the offline engine captures.
"""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, Policy

from .alarms import ALARM_POLICIES
from .endpoint import ENDPOINT_POLICIES
from .engine import ENGINE_POLICIES
from .fleet import FLEET_POLICIES
from .host_roles import HOST_ROLE_POLICIES
from .logs import LOG_POLICIES
from .network import NETWORK_POLICIES
from .resources import RESOURCE_POLICIES
from .schedule import SCHEDULE_POLICIES

PACK_NAME = "llmfleet"
# Each policy sets its own level; this covers any that do not.
PACK_ENFORCEMENT = EnforcementLevel.ADVISORY

POLICIES: list[Policy] = [
    *RESOURCE_POLICIES,
    *NETWORK_POLICIES,
    *FLEET_POLICIES,
    *LOG_POLICIES,
    *ENDPOINT_POLICIES,
    *ALARM_POLICIES,
    *HOST_ROLE_POLICIES,
    *ENGINE_POLICIES,
    *SCHEDULE_POLICIES,
]


def by_name() -> dict[str, Policy]:
    return {p.name: p for p in POLICIES}
