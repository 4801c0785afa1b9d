"""`local up --lora`: the local cluster's adapters store, an S3 endpoint on the head host.

Ray Serve LLM 2.60 loads adapters only from object storage (LoraConfig refuses a
dynamic_lora_loading_path that is not s3://, gs://, abfss:// or azure://), so the local cluster
gets what a stack has: an S3 bucket. It is moto's server (moto[server], the dev extra), run
supervised on the head host; every host's node env points S3 at it (AWS_ENDPOINT_URL_S3, which
boto3, used by Ray Serve LLM's downloader, and the fine-tune job's pyarrow filesystem read), with
placeholder credentials that only this endpoint accepts. The store is in memory: adapters live
as long as the cluster (a restarted store comes back empty; `local down` removes it with the
hosts). The same renderer as a stack's llmfleet:lora gives the Serve config its lora_config.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from infra.local.hosts import Host
from infra.local.layout import LocalError, Ports
from infra.stack.lora import LoraSettings

BUCKET = "llmfleet-local"
PREFIX = "adapters/"
REGION = "us-east-1"
# moto accepts any key pair; these name what they are, and no real endpoint takes them.
ACCESS_KEY = "llmfleet-local"
SECRET_KEY = "llmfleet-local-secret"
MAX_RANK = 16  # the highest rank the local engines load (vLLM's max_lora_rank)
MAX_ADAPTERS = 2  # adapters resident per local replica (Ray's LRU = vLLM's max_loras)


def adapters_uri() -> str:
    return f"s3://{BUCKET}/{PREFIX}"


def endpoint(head: Host, ports: Ports) -> str:
    return f"http://{head.ip}:{ports.s3}"


def env(url: str) -> dict[str, str]:
    """What every host's node (and so every Ray worker, the replicas and the fine-tune job) needs
    to reach the store."""
    return {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


def check_installed() -> None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise LocalError("--lora: moto's S3 server is not installed; install moto[server] (the dev extra)")


def server_argv(head: Host, ports: Ports, python: str = sys.executable) -> list[str]:
    return [python, "-m", "moto.server", "-H", head.ip, "-p", str(ports.s3)]


def settings() -> LoraSettings:
    """llmfleet:lora for the local cluster, through the stack's own model (the same validation)."""
    return LoraSettings.model_validate(
        {"adapters": adapters_uri(), "maxAdapters": MAX_ADAPTERS, "maxRank": MAX_RANK}
    )


def client(url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def wait_and_create_bucket(url: str, log: Path, timeout: float = 60.0) -> None:
    """The store answers, and the bucket exists (created once; moto keeps it while it runs)."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.create_bucket(Bucket=BUCKET)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise LocalError(
                f"--lora: the adapters store at {url} refused the bucket: {e}; log {log}"
            ) from None
        except BotoCoreError:
            if time.monotonic() > deadline:
                raise LocalError(
                    f"--lora: the adapters store at {url} did not answer in {timeout:g} s; log {log}"
                ) from None
            time.sleep(0.5)


def list_adapters(url: str) -> list[str]:
    """The adapter names in the store (its folders under the prefix)."""
    s3 = client(url)
    out = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX, Delimiter="/")
    return sorted(p["Prefix"][len(PREFIX) :].rstrip("/") for p in out.get("CommonPrefixes", []))
