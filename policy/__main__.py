"""Entry point the Pulumi CLI runs: constructing the PolicyPack starts its gRPC server and blocks."""

import sys
from pathlib import Path

# The pack imports the project (planner, catalog, cost); make the repo importable even when the
# virtualenv has llmfleet installed non-editable or not at all.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack  # noqa: E402

from policy.policies import PACK_ENFORCEMENT, PACK_NAME, POLICIES  # noqa: E402

PolicyPack(name=PACK_NAME, enforcement_level=PACK_ENFORCEMENT, policies=POLICIES)
