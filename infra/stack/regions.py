"""AWS region names, from botocore's own region data (botocore/data/endpoints.json).

infra.stack stays free of cloud SDKs (an import-linter contract), so this reads the data file
that botocore ships instead of importing botocore: `find_spec` locates the installed package
without running it. The list is as current as the installed botocore, the same list boto3
and the AWS CLI on this machine resolve endpoints from.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path


@cache
def known_regions() -> frozenset[str]:
    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()  # botocore is a locked dependency; without it nothing is rejected
    data = json.loads((Path(spec.submodule_search_locations[0]) / "data" / "endpoints.json").read_text())
    return frozenset(
        name
        for partition in data.get("partitions", [])
        for name in partition.get("regions", {})
        if not name.endswith("-global")  # pseudo-regions of global services (aws-global, aws-cn-global)
    )


def is_known_region(name: str) -> bool:
    regions = known_regions()
    return not regions or name in regions
