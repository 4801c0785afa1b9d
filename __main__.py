"""The llmfleet Pulumi program: load config -> plan -> components -> exports.

Composition only; every resource lives in a component under infra/components/.
"""

import pulumi

from infra.program import build

outputs = build()
for key, value in outputs.items():
    pulumi.export(key, value)
