"""The one place that says which AMI the hosts boot from.

The cluster component resolves it with `aws.ec2.get_ami(**AMI_LOOKUP)` at deploy time
and `llmfleet preflight` resolves the same filter with boto3 before anything is created,
so the two can never disagree about the image.
"""

from __future__ import annotations

# AWS Deep Learning Base AMI: NVIDIA driver, CUDA, Docker and the NVIDIA container
# toolkit preinstalled (https://docs.aws.amazon.com/dlami/latest/devguide/appendix-ami-release-notes.html).
AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
AMI_OWNERS = ["amazon"]
AMI_ARCHITECTURE = "x86_64"

# Keyword arguments for pulumi_aws.ec2.get_ami (most recent matching image).
AMI_LOOKUP = {
    "most_recent": True,
    "owners": AMI_OWNERS,
    "filters": [
        {"name": "name", "values": [AMI_NAME]},
        {"name": "architecture", "values": [AMI_ARCHITECTURE]},
        {"name": "state", "values": ["available"]},
    ],
}


def boto3_describe_images_args() -> dict:
    """The same filter as AMI_LOOKUP, shaped for boto3 `ec2.describe_images`."""
    return {
        "Owners": list(AMI_OWNERS),
        "Filters": [{"Name": f["name"], "Values": list(f["values"])} for f in AMI_LOOKUP["filters"]],
    }
