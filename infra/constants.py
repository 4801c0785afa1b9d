"""Operator-side constants shared by both programs, the renderers and the CLI (one home)."""

from __future__ import annotations

from pathlib import Path

from ray_cluster.contract import DASHBOARD_PORT

# The directory holding the infra/, ray_cluster/ and policy/ packages: the checkout, or
# site-packages when installed. Package code only: the Pulumi project (Pulumi.yaml, stacks/,
# __main__.py) is wherever the user runs llmfleet (infra.stack.files.project_root).
REPO_ROOT = Path(__file__).resolve().parent.parent
# The node image's build context inside an installed wheel (pyproject's force-include).
PACKAGED_NODE_CONTEXT = Path(__file__).resolve().parent / "_node_context"
RAY_VERSION = "2.60.0"  # the image's Ray must match the operator's `ray` (client/cluster.yaml)
SSH_USER = "ubuntu"  # Deep Learning Base AMI (Ubuntu 22.04)
# Weight staging (aws s3 sync at boot) and the cold-start estimate that prices it read one figure.
S3_MAX_CONCURRENT_REQUESTS = 64
GIB = 1024**3
# How far an upload's total may sit from the model card's checkpoint size (preflight reads the
# bucket, `weights upload` the local checkpoint, against the same figure).
WEIGHTS_TOLERANCE = 0.05

__all__ = [
    "DASHBOARD_PORT",
    "GIB",
    "PACKAGED_NODE_CONTEXT",
    "RAY_VERSION",
    "REPO_ROOT",
    "S3_MAX_CONCURRENT_REQUESTS",
    "SSH_USER",
    "WEIGHTS_TOLERANCE",
    "cluster_name",
    "node_image_context",
]


def node_image_context() -> Path:
    """The directory holding images/ + ray_cluster/, the node image's build context: the copy an
    installed wheel carries, else the checkout. Both hash to the same tag (same relative paths,
    same bytes), so an installed `llmfleet` and the checkout agree on the image a stack runs."""
    for root in (PACKAGED_NODE_CONTEXT, REPO_ROOT):
        if (root / "images" / "Dockerfile").is_file() and (root / "ray_cluster").is_dir():
            return root
    raise FileNotFoundError(
        f"node image context: no images/Dockerfile in {PACKAGED_NODE_CONTEXT} or {REPO_ROOT}; "
        "allowed: a checkout or an installed llmfleet-iac wheel"
    )


def cluster_name(cfg) -> str:
    return f"llmfleet-{cfg.stack}"
