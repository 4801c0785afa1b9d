"""Operator-side constants shared by both programs, the renderers and the CLI (one home)."""

from __future__ import annotations

from pathlib import Path

from ray_cluster.contract import DASHBOARD_PORT

REPO_ROOT = Path(__file__).resolve().parent.parent
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
    "RAY_VERSION",
    "REPO_ROOT",
    "S3_MAX_CONCURRENT_REQUESTS",
    "SSH_USER",
    "WEIGHTS_TOLERANCE",
    "cluster_name",
]


def cluster_name(cfg) -> str:
    return f"llmfleet-{cfg.stack}"
