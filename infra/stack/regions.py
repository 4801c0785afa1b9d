"""AWS region names and their partitions, from botocore's own region data
(botocore/data/endpoints.json).

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

# The only partition the project supports: its components build ARNs as `arn:aws:...` and its
# policies, prices and AMI lookups are the commercial regions'.
SUPPORTED_PARTITION = "aws"


@cache
def region_partitions() -> dict[str, str]:
    """Region name -> its partition (aws, aws-cn, aws-us-gov, aws-iso, ...)."""
    spec = importlib.util.find_spec("botocore")
    if spec is None or not spec.submodule_search_locations:
        return {}  # botocore is a locked dependency; without it nothing is rejected
    data = json.loads((Path(spec.submodule_search_locations[0]) / "data" / "endpoints.json").read_text())
    return {
        name: partition.get("partition", "")
        for partition in data.get("partitions", [])
        for name in partition.get("regions", {})
        if not name.endswith("-global")  # pseudo-regions of global services (aws-global, aws-cn-global)
    }


def known_regions() -> frozenset[str]:
    return frozenset(region_partitions())


def is_known_region(name: str) -> bool:
    regions = region_partitions()
    return not regions or name in regions


def partition_of(name: str) -> str:
    """The region's partition; the supported one when botocore's data is missing or unknown."""
    return region_partitions().get(name, SUPPORTED_PARTITION)
