"""Rules across keys of the stack config: commitments, the layout, routing and LoRA for every
provider (check_all); endpoint TLS and DNS, the alarm topic, Capacity Blocks and the network of
provider aws (check_aws); the hosts of provider existing (check_owned).

Each check takes the validated StackConfig and raises `CrossKeyError`, whose message is already
the one line (the key that must change, its value, what is allowed); `StackConfig` runs them in
this order after every single key passed (`config_values`).
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from infra.catalog import load_catalog
from infra.stack import lora
from infra.stack.config_values import ACM_ARN_RE, SNS_TOPIC_ARN_RE
from infra.stack.host_spec import HOST_KEY_ALLOWED

# What an internal endpoint may admit without llmfleet:endpointAllowPublicCidrs (and the VPC).
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def subnet_of(net: IpNetwork, other: IpNetwork) -> bool:
    """`net` lies inside `other`; False across address families (ipaddress raises there)."""
    if isinstance(net, ipaddress.IPv4Network) and isinstance(other, ipaddress.IPv4Network):
        return net.subnet_of(other)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(other, ipaddress.IPv6Network):
        return net.subnet_of(other)
    return False


if TYPE_CHECKING:
    from infra.stack.config import AwsStackConfig, OwnedStackConfig, StackConfig


def fmt_value(v: Any) -> str:
    if v is None:
        return "(unset)"
    return json.dumps(v) if not isinstance(v, str) else repr(v)


class CrossKeyError(ValueError):
    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"{key} = {fmt_value(value)}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def check_all(cfg: StackConfig) -> None:
    """The rules of every provider's stack (StackConfig's validator, after the provider's own)."""
    check_commitments(cfg)
    check_layout(cfg)
    check_routing(cfg)
    check_lora(cfg)


def check_aws(cfg: AwsStackConfig) -> None:
    """The rules over provider aws's own keys (AwsStackConfig's, before check_all)."""
    check_endpoint_tls_dns(cfg)
    check_alarm_topic(cfg)
    check_capacity_block(cfg)
    check_aws_layout(cfg)
    check_idle_stop_with_gcs_redis(cfg)


def check_owned(cfg: OwnedStackConfig) -> None:
    """The rules over provider existing's own keys (OwnedStackConfig's, before check_all)."""
    check_hosts(cfg)
    check_scale_to_zero(cfg)


def check_lora(cfg: StackConfig) -> None:
    if cfg.lora is None:
        return
    why = lora.refusal(cfg.model, asked_by="llmfleet:lora is set")
    if why:
        # the one line names the model (what the adapters cannot go on) and the catalog's reason
        raise CrossKeyError("llmfleet:model", cfg.model, why.split(": ", 1)[1])
    if lora.inside_weights(cfg.lora.adapters, cfg.weights_uri):
        raise CrossKeyError(
            "llmfleet:lora.adapters",
            cfg.lora.adapters,
            f"is inside llmfleet:weightsUri {cfg.weights_uri!r}, which the hosts stage and verify as one "
            "checkpoint; allowed: an s3:// prefix outside it",
        )


def check_routing(cfg: StackConfig) -> None:
    # Ray would accept it, but with one replica every request goes to it anyway: the router and
    # its prefix-tree actor would only cost memory, and the key would say more than it does.
    if cfg.routing == "prefix" and cfg.replicas < 2:
        raise CrossKeyError(
            "llmfleet:routing",
            "prefix",
            f"needs llmfleet:replicas >= 2 (it is {cfg.replicas}: one replica gets every request); allowed here: pow2",
        )


def check_scale_to_zero(cfg: OwnedStackConfig) -> None:
    """Schedules and idle stop scale the workers' Auto Scaling groups: hosts you own have none
    (stop and start them yourself; the local cluster has `llmfleet local sleep|wake`)."""
    for key, value in (
        ("llmfleet:schedule", cfg.schedule),
        ("llmfleet:idleStopMinutes", cfg.idle_stop_minutes),
    ):
        if value:
            raise CrossKeyError(
                key, value, "it scales the workers' Auto Scaling groups; allowed with provider aws"
            )


def check_idle_stop_with_gcs_redis(cfg: AwsStackConfig) -> None:
    """Idle stop reads the last request from the head's own activity file (ray_cluster/watch.py
    idle_line), touched by the ingress replica on the head. With llmfleet:gcsRedis the NLB also
    sends requests to the workers' proxies and ingress replicas (infra/rayconf/serving.py
    ingress_hosts), whose activity the head's watcher does not see: the workers could be stopped
    while they serve. Refused until that activity reaches the watcher."""
    if cfg.gcs_redis and cfg.idle_stop_minutes:
        raise CrossKeyError(
            "llmfleet:idleStopMinutes",
            cfg.idle_stop_minutes,
            "idle stop sees only the head's requests, and with llmfleet:gcsRedis=true the workers' "
            "proxies serve too; allowed: unset, or llmfleet:gcsRedis=false (llmfleet:schedule works with both)",
        )


def check_endpoint_tls_dns(cfg: AwsStackConfig) -> None:
    arn = cfg.endpoint_certificate_arn
    if arn is not None:
        m = ACM_ARN_RE.fullmatch(arn)
        if m and m.group(1) != cfg.region:
            raise CrossKeyError(
                "llmfleet:endpointCertificateArn",
                arn,
                f"the NLB takes a certificate from its own region; allowed: an ACM certificate in {cfg.region}",
            )
    if (cfg.endpoint_dns_name is None) != (cfg.endpoint_hosted_zone_id is None):
        key = "llmfleet:endpointHostedZoneId" if cfg.endpoint_dns_name else "llmfleet:endpointDnsName"
        raise CrossKeyError(
            key,
            None,
            "the alias record needs both; allowed: set llmfleet:endpointDnsName and llmfleet:endpointHostedZoneId together",
        )


def check_alarm_topic(cfg: AwsStackConfig) -> None:
    arn = cfg.alarm_topic_arn
    m = SNS_TOPIC_ARN_RE.fullmatch(arn) if arn is not None else None
    if m and m.group(1) != cfg.region:
        raise CrossKeyError(
            "llmfleet:alarmTopicArn",
            arn,
            f"a CloudWatch alarm notifies a topic in its own region; allowed: an SNS topic in {cfg.region}",
        )


def check_capacity_block(cfg: AwsStackConfig) -> None:
    """A Capacity Block excludes spot, another reservation and spot pricing, and needs its AZ."""
    block, model = cfg.capacity_block_id, cfg.pricing_model
    if block is not None:
        if cfg.spot:
            raise CrossKeyError(
                "llmfleet:capacityBlockId",
                block,
                "workers in a Capacity Block are not spot; set llmfleet:spot=false",
            )
        if cfg.capacity_reservation_id is not None:
            raise CrossKeyError(
                "llmfleet:capacityBlockId",
                block,
                "workers target one reservation; allowed: capacityBlockId or capacityReservationId, not both",
            )
        if not cfg.availability_zone:
            raise CrossKeyError(
                "llmfleet:availabilityZone",
                None,
                "workers must launch in the Capacity Block's AZ; allowed: that AZ "
                "(aws ec2 describe-capacity-reservations --capacity-reservation-ids " + block + ")",
            )
        if model == "spot":
            raise CrossKeyError(
                "llmfleet:pricingModel",
                model,
                "workers in a Capacity Block pay its fee; allowed: on-demand, savings-plan-1y, savings-plan-3y (for the head)",
            )


def check_commitments(cfg: StackConfig) -> None:
    """Pricing-model rules (spot and Savings Plans exclude each other where AWS does not combine
    them); a Capacity Block's are check_capacity_block's."""
    model = cfg.pricing_model
    if model == "spot" and not cfg.spot:
        raise CrossKeyError(
            "llmfleet:pricingModel",
            model,
            "spot prices spot workers; set llmfleet:spot=true, or allowed: on-demand, savings-plan-1y, savings-plan-3y",
        )
    if model in ("savings-plan-1y", "savings-plan-3y", "on-demand") and cfg.spot:
        raise CrossKeyError(
            "llmfleet:pricingModel",
            model,
            "llmfleet:spot=true runs the workers on spot; allowed: spot, or set llmfleet:spot=false",
        )


def check_aws_layout(cfg: AwsStackConfig) -> None:
    """Endpoint exposure, zone, head type and the worker count of provider aws."""
    if cfg.endpoint_public and not cfg.endpoint_allowed_cidrs:
        raise CrossKeyError(
            "llmfleet:endpointAllowedCidrs",
            [],
            "a public endpoint (llmfleet:endpointPublic=true) needs at least one allowed CIDR",
        )
    if not cfg.endpoint_public:
        check_internal_cidrs(cfg)
    if cfg.availability_zone and not cfg.availability_zone.startswith(cfg.region):
        raise CrossKeyError(
            "llmfleet:availabilityZone",
            cfg.availability_zone,
            f"allowed: a zone of aws:region {cfg.region} such as {cfg.region}a",
        )
    cat = load_catalog()
    if cat.instances[cfg.head_instance_type].gpu:
        raise CrossKeyError(
            "llmfleet:headInstanceType",
            cfg.head_instance_type,
            "the head advertises 0 GPUs, so a GPU type is wasted; allowed: "
            + ", ".join(i.name for i in cat.instances.values() if not i.gpu),
        )
    if cfg.worker_count != "auto" and cfg.worker_count % cfg.replicas:
        raise CrossKeyError(
            "llmfleet:workerCount",
            cfg.worker_count,
            f"allowed: 'auto' or a multiple of llmfleet:replicas ({cfg.replicas}); "
            "every replica takes the same number of hosts",
        )


def check_layout(cfg: StackConfig) -> None:
    """Quantization and context length, whatever the provider."""
    gpu = load_catalog().gpus[cfg.gpu_model] if cfg.gpu_model else None
    if cfg.quantization == "fp8" and gpu is not None and not gpu.native_fp8:
        raise CrossKeyError(
            "llmfleet:quantization",
            "fp8",
            f"{cfg.gpu_model} has no native FP8; allowed here: bf16, int8, int4",
        )
    cat = load_catalog()
    if cfg.max_model_len != "auto" and cfg.max_model_len > cat.models[cfg.model].max_position_embeddings:
        raise CrossKeyError(
            "llmfleet:maxModelLen",
            cfg.max_model_len,
            f"allowed: up to {cat.models[cfg.model].max_position_embeddings} for {cfg.model}",
        )


def check_internal_cidrs(cfg: AwsStackConfig) -> None:
    """An internal endpoint admits private networks only: 0.0.0.0/1 + 128.0.0.0/1 is /0 too,
    so every CIDR must sit inside a private range (or the VPC), not merely be narrower than /0."""
    vpc = ipaddress.ip_network(cfg.vpc_cidr)
    for c in cfg.endpoint_allowed_cidrs:
        net = ipaddress.ip_network(c)
        if net.prefixlen == 0:
            raise CrossKeyError(
                "llmfleet:endpointAllowedCidrs",
                cfg.endpoint_allowed_cidrs,
                "an internal endpoint cannot admit 0.0.0.0/0 or ::/0",
            )
        private = any(subnet_of(net, p) for p in (*PRIVATE_NETWORKS, vpc))
        if not private and not cfg.endpoint_allow_public_cidrs:
            raise CrossKeyError(
                "llmfleet:endpointAllowedCidrs",
                cfg.endpoint_allowed_cidrs,
                f"entry {c!r} is not private; allowed for an internal endpoint: CIDRs inside 10.0.0.0/8, "
                f"172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, fc00::/7 or the VPC {cfg.vpc_cidr} "
                "(or set llmfleet:endpointAllowPublicCidrs=true)",
            )


def check_hosts(cfg: OwnedStackConfig) -> None:
    """provider=existing: one head, identical GPU workers, one address and one Ray IP per host."""
    key = "llmfleet:hosts"
    if not cfg.hosts:
        raise CrossKeyError(key, [], "provider 'existing' needs a list of hosts, one with role head")
    heads = [i for i, h in enumerate(cfg.hosts) if h.role == "head"]
    if not heads:
        raise CrossKeyError(key, "[...]", "no entry has role 'head'; allowed: exactly one head")
    if len(heads) > 1:
        raise CrossKeyError(
            f"{key}[{heads[1]}]",
            cfg.hosts[heads[1]].address,
            f"second head (entry {heads[0]} is the head); allowed: exactly one head",
        )
    seen: dict[str, int] = {}
    seen_ip: dict[str, int] = {}
    gpus = load_catalog().gpus
    for i, h in enumerate(cfg.hosts):
        if h.address in seen:
            raise CrossKeyError(
                f"{key}[{i}].address",
                h.address,
                f"duplicates entry {seen[h.address]}; allowed: one entry per host",
            )
        seen[h.address] = i
        if h.host_key is None:
            raise CrossKeyError(
                f"{key}[{i}].hostKey",
                None,
                f"an unverified {h.address} would get the Ray and endpoint tokens; {HOST_KEY_ALLOWED}",
            )
        if h.role == "worker" and h.gpu_count < 1:
            raise CrossKeyError(
                f"{key}[{i}].gpuCount",
                h.gpu_count,
                f"worker {h.address} has no GPUs; allowed: an integer >= 1",
            )
        # The head's GPUs go unused (it advertises 0) but a declared model must still exist.
        if h.gpu_count > 0 and h.gpu_model not in gpus:
            raise CrossKeyError(f"{key}[{i}].gpuModel", h.gpu_model, f"allowed: {', '.join(gpus)}")
    for i, h in enumerate(cfg.hosts):
        if h.ray_ip is None:
            raise CrossKeyError(
                f"{key}[{i}].privateIp",
                None,
                f"address {h.address} is a name and Ray binds an IP; allowed: the host's IPv4 privateIp",
            )
        if h.ray_ip in seen_ip:
            raise CrossKeyError(
                f"{key}[{i}].privateIp",
                h.ray_ip,
                f"same IP as entry {seen_ip[h.ray_ip]}; allowed: one IP per host",
            )
        seen_ip[h.ray_ip] = i
    workers = cfg.worker_hosts
    if not workers:
        raise CrossKeyError(key, "[...]", "no entry has role 'worker'; allowed: at least one GPU worker")
    if len({(w.gpu_model, w.gpu_count) for w in workers}) > 1:
        raise CrossKeyError(
            key,
            "[...]",
            "workers differ in gpuModel/gpuCount; allowed: identical workers "
            "(tensor parallel = GPUs per host, pipeline parallel = hosts)",
        )
    if cfg.worker_count != "auto" and cfg.worker_count != len(workers):
        raise CrossKeyError(
            "llmfleet:workerCount",
            cfg.worker_count,
            f"allowed: 'auto' or {len(workers)} (the number of worker hosts)",
        )
    if len(workers) % cfg.replicas:
        raise CrossKeyError(
            "llmfleet:replicas",
            cfg.replicas,
            f"allowed: a divisor of the {len(workers)} worker hosts (each replica takes the same hosts)",
        )
    if not cfg.ssh_private_key:
        raise CrossKeyError(
            "llmfleet:sshPrivateKey",
            None,
            "provider 'existing' needs an SSH key: pulumi config set --secret sshPrivateKey < key",
        )
