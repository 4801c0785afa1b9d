"""Render Ray's cluster-launcher config (cluster.yaml) from stack outputs; Ray validates it.

The cluster already runs (cloud-init starts every node); cluster.yaml only lets
`ray attach / exec / submit / dashboard / up` reach it. So it uses the `local` provider with
the stack's head and worker IPs, the same image (by digest), the same container name and the
same node commands as the hosts' units, and the head starts WITHOUT `--autoscaling-config`:
no autoscaler on the head tries to SSH into workers, which join on their own.

SSH without an open port: for AWS hosts (instance ids in the outputs) every connection goes
through `aws ssm start-session --document-name AWS-StartSSHSession`. The local provider has ONE
auth section for all hosts and ssh only knows the target IP (%h), so the ProxyCommand is a
small `sh -c` script with the stack's IP -> instance-id table embedded; an unknown IP fails
with a message instead of connecting anywhere. For `provider: existing` hosts (no instance ids)
it is plain SSH to the declared addresses.

Inputs are the stack outputs (`pulumi stack output --json` or the offline engine). On AWS the
GPU workers are Auto Scaling groups whose instances change without a `pulumi up`: the outputs
name the groups (`worker_groups`) and the caller fills `worker_private_ips` /
`worker_instance_ids` with the running ones (infra/worker_lookup.py) or leaves them empty (a
head-only cluster.yaml: `ray attach/exec/submit/dashboard` only reach the head, and workers
join on their own).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.validation import first_error
from ray_cluster import contract, node, ray_start

# The hosts' units (infra/boot/cloud_init.py) name their container llmfleet-<role>; the stack exports
# the head's as head_container. `ray attach/exec/submit/dashboard` all target the head.
DEFAULT_HEAD_CONTAINER = "llmfleet-head"
# `ray attach/exec/submit` run in the container and inherit the hosts' env file (the tokens).
HOST_ENV_FILE = contract.HOST_ENV_FILE
NODE_ENTRYPOINT = contract.IMAGE_ENTRYPOINT
SSM_DOCUMENT = "AWS-StartSSHSession"

_DIGEST_RE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
_ECR_RE = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/")
_INSTANCE_RE = re.compile(r"^i-[0-9a-f]{8,17}$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


class RenderError(ValueError):
    """A one-line reason the outputs cannot become a config (or Ray rejected it)."""


class ClusterOutputs(BaseModel):
    """The stack outputs cluster.yaml needs; other outputs are ignored."""

    model_config = ConfigDict(extra="ignore")

    cluster_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    head_private_ip: str
    worker_private_ips: list[str]
    image_ref: str
    gpus_per_worker: int = Field(ge=1)
    gpu_model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model_path: str = Field(pattern=r"^/\S+$")
    ssh_user: str = Field(default="ubuntu", min_length=1)
    head_container: str = Field(default=DEFAULT_HEAD_CONTAINER, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    region: str | None = None
    head_instance_id: str | None = None
    worker_instance_ids: list[str] | None = None
    worker_groups: list[str] | None = None  # AWS: the worker slots' Auto Scaling groups
    head_group: str | None = None  # AWS: the head's Auto Scaling group (its instance is looked up)
    # provider: existing may export SSH addresses that differ from the private IPs.
    head_address: str | None = None
    worker_addresses: list[str] | None = None

    @field_validator("head_private_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        if not _IP_RE.match(v):
            raise ValueError("allowed: an IPv4 address")
        return v

    @field_validator("worker_private_ips")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        for ip in v:
            if not _IP_RE.match(ip):
                raise ValueError(f"entry {ip!r} is not an IPv4 address")
        if len(set(v)) != len(v):
            raise ValueError("allowed: distinct IPs")
        return v

    @field_validator("image_ref")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not _DIGEST_RE.match(v):
            raise ValueError("allowed: an image pinned by digest, REPO@sha256:<64 hex>")
        return v

    @model_validator(mode="after")
    def _ids(self) -> ClusterOutputs:
        if self.worker_groups is None and not self.worker_private_ips:
            raise ValueError("worker_private_ips: allowed: at least one worker IP (or worker_groups on AWS)")
        if self.worker_groups is not None and self.worker_instance_ids is None:
            self.worker_instance_ids = []  # none running, or not looked up
        if self.head_group is not None and self.head_instance_id is None:
            if self.worker_instance_ids:
                raise ValueError(
                    f"head_instance_id: no running instance in head group {self.head_group!r} "
                    "(the group is replacing the head); allowed: retry once it is back"
                )
            self.worker_instance_ids = None  # nothing looked up (an offline render): no SSM proxy
        if (self.head_instance_id is None) != (self.worker_instance_ids is None):
            raise ValueError("head_instance_id and worker_instance_ids come together (AWS) or not at all")
        if self.worker_instance_ids is not None:
            ids = [self.head_instance_id, *self.worker_instance_ids]
            bad = next((i for i in ids if not _INSTANCE_RE.match(str(i))), None)
            if bad is not None:
                raise ValueError(f"instance id {bad!r} is not an EC2 instance id (i-...)")
            if len(self.worker_instance_ids) != len(self.worker_private_ips):
                raise ValueError(
                    f"{len(self.worker_instance_ids)} worker_instance_ids for "
                    f"{len(self.worker_private_ips)} worker_private_ips; allowed: one id per IP"
                )
            if not self.region:
                raise ValueError("region is required with instance ids (the SSM session needs it)")
        if self.worker_addresses is not None and len(self.worker_addresses) != len(self.worker_private_ips):
            raise ValueError("worker_addresses: allowed: one address per worker_private_ips entry")
        return self

    @property
    def ssh_head(self) -> str:
        return self.head_address or self.head_private_ip

    @property
    def ssh_workers(self) -> list[str]:
        return list(self.worker_addresses or self.worker_private_ips)


def parse_outputs(outputs: Mapping[str, Any]) -> ClusterOutputs:
    """Validate stack outputs; RenderError names the output key, its value and what is allowed."""
    try:
        return ClusterOutputs.model_validate(dict(outputs))
    except ValidationError as e:
        raise RenderError(_first_error("stack output", e)) from None


def _first_error(what: str, e: ValidationError) -> str:
    err = first_error(e)
    if err.type == "missing":
        return f"{what} {err.path!r} is missing"
    if not err.path:
        return f"{what}s: {err.msg}"
    return f"{what} {err.path} = {err.input!r}: {err.msg}"


# ---------------------------------------------------------------- pieces (pure)


def ssm_proxy_command(ip_to_instance: Mapping[str, str], region: str) -> str:
    """ssh ProxyCommand that maps the target IP (%h) to its instance id and opens an SSM session.

    ssh runs it with the user's shell after expanding %h/%p; the script itself is POSIX sh.
    """
    cases = " ".join(f"{ip}) t={iid} ;;" for ip, iid in ip_to_instance.items())
    script = (
        f'case "$1" in {cases} '
        '*) echo "llmfleet: $1 is not a host of this cluster" >&2; exit 1 ;; esac; '
        f'exec aws ssm start-session --target "$t" --document-name {SSM_DOCUMENT} '
        f'--parameters "portNumber=$2" --region {region}'
    )
    return f"sh -c {shlex.quote(script)} llmfleet-ssm-proxy %h %p"


# --entrypoint= resets the image's entrypoint (python -m ray_cluster.node): the launcher runs
# `docker run ... IMAGE bash` and then `docker exec`s its start commands in that container.
COMMON_RUN_OPTIONS = ["--entrypoint="]


def role_run_options(role: str, model_path: str) -> list[str]:
    """The node contract's `docker run` options for a role (the ones the units use), as
    `--flag=value`. No --network: Ray's launcher always adds --net=host itself, and Docker
    rejects a network given twice."""
    try:
        opts = contract.docker_run_options(
            role, model_path, config_dir=contract.HOST_CONFIG_DIR if role == "head" else None
        )
    except contract.ContractError as e:
        raise RenderError(str(e)) from None
    return [f"{k}={v}" for k, v in opts if k != "--network"]


def head_node_argv(head_ip: str) -> list[str]:
    """The head unit's command (cloud-init: entrypoint + `head --ip $NODE_IP --block`) for this
    head's IP, without --block: the launcher runs it with `docker exec` and waits for it."""
    return [*NODE_ENTRYPOINT, *contract.head_args(ip=head_ip, block=False)]


def worker_node_argv(head_ip: str, gpus: int, gpu_model: str) -> list[str]:
    """The worker unit's command without `--ip` and --block: one list serves every worker, and
    the node module takes the source IP towards the head (the same private IP the unit passes)."""
    return [
        *NODE_ENTRYPOINT,
        *contract.worker_args(
            address=f"{head_ip}:{contract.GCS_PORT}", gpus=gpus, gpu_model=gpu_model, block=False
        ),
    ]


def head_start_ray_commands(head_ip: str) -> list[str]:
    """Start the head unless its unit already did.

    No `ray stop` (Ray's default list has one, ours replaces it): the unit's container runs
    `ray start --block` as its main process with a restart policy, so stopping Ray would kill
    the container and race its restart. When the GCS answers, `ray up` has nothing to do.
    """
    probe = ray_start.shell_command(["ray", "status", f"--address={head_ip}:{node.GCS_PORT}"])
    return [f"{probe} >/dev/null 2>&1 || {ray_start.shell_command(head_node_argv(head_ip))}"]


def ecr_login_command(image_ref: str) -> str | None:
    """Host-side ECR login before `docker pull` (hosts have an instance profile with pull rights)."""
    m = _ECR_RE.match(image_ref)
    if not m:
        return None
    registry = image_ref.split("/", 1)[0]
    return (
        f"aws ecr get-login-password --region {m.group(2)} | "
        f"docker login --username AWS --password-stdin {registry}"
    )


# ---------------------------------------------------------------- the document


def render_cluster_yaml(outputs: Mapping[str, Any], ssh_private_key: str | None = None) -> dict[str, Any]:
    """The cluster.yaml document (a dict; dump it with yaml.safe_dump)."""
    o = parse_outputs(outputs)
    auth: dict[str, Any] = {"ssh_user": o.ssh_user}
    # SSM (AWS): the validator holds the instance ids and the region together
    if o.head_instance_id is not None and o.worker_instance_ids is not None and o.region:
        table = {
            o.head_private_ip: o.head_instance_id,
            **dict(zip(o.worker_private_ips, o.worker_instance_ids, strict=True)),
        }
        auth["ssh_proxy_command"] = ssm_proxy_command(table, o.region)
    if ssh_private_key:
        auth["ssh_private_key"] = ssh_private_key
    login = ecr_login_command(o.image_ref)
    return {
        "cluster_name": o.cluster_name,
        "max_workers": len(o.worker_private_ips),
        "provider": {"type": "local", "head_ip": o.ssh_head, "worker_ips": o.ssh_workers},
        "auth": auth,
        "docker": {
            "image": o.image_ref,
            "container_name": o.head_container,
            "pull_before_run": True,
            "run_options": list(COMMON_RUN_OPTIONS),
            "head_run_options": role_run_options("head", o.model_path),
            "worker_run_options": role_run_options("worker", o.model_path),
            # Explicit --gpus/--shm-size above; no host-dependent additions by the launcher.
            "disable_automatic_runtime_detection": True,
            "disable_shm_size_detection": True,
        },
        "initialization_commands": [login] if login else [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        # Run by the launcher inside the container. Without --autoscaling-config on the head, no
        # autoscaler SSHes into workers: they join on their own (their units), so `ray up`
        # only ever runs the head's commands.
        "head_start_ray_commands": head_start_ray_commands(o.head_private_ip),
        "worker_start_ray_commands": [
            ray_start.shell_command(worker_node_argv(o.head_private_ip, o.gpus_per_worker, o.gpu_model))
        ],
        "file_mounts": {},
    }


def _ray_message(e: BaseException) -> str:
    try:
        import jsonschema

        if isinstance(e, jsonschema.ValidationError):
            path = ".".join(str(p) for p in e.absolute_path)
            return f"{path}: {e.message}" if path else e.message
    except ImportError:  # pragma: no cover - ray[default] depends on jsonschema
        pass
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def render_validated(outputs: Mapping[str, Any], ssh_private_key: str | None = None) -> dict[str, Any]:
    """render_cluster_yaml, then Ray's validator and bootstrap (RenderError with Ray's message)."""
    doc = render_cluster_yaml(outputs, ssh_private_key=ssh_private_key)
    validate_with_ray(doc)
    return doc


def validate_with_ray(doc: Mapping[str, Any], bootstrap: bool = True) -> dict[str, Any]:
    """Validate with Ray's own code: validate_config(prepare_config(doc)) and, when bootstrap,
    the first step of `ray up` (_bootstrap_config, without its on-disk cache).

    Returns the prepared config. Raises RenderError with Ray's message. Ray's CLI logger output
    is swallowed so a rendered YAML on stdout stays clean.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            prepared = prepare_config(dict(doc))
            validate_config(prepared)
            if bootstrap:
                from ray.autoscaler._private.commands import _bootstrap_config

                _bootstrap_config(dict(doc), no_config_cache=True)
    except (Exception, SystemExit) as e:  # click aborts and schema errors alike: one line
        raise RenderError(f"Ray rejected cluster.yaml: {_ray_message(e)}") from None
    return prepared
