"""The AWS program: VPC, registry + image, IAM, weights bucket, GPU instances, NLB -> outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pulumi
import pulumi_aws as aws

from infra.catalog import load_catalog
from infra.components.cluster import Cluster, ClusterArgs
from infra.components.endpoint import Endpoint, EndpointArgs
from infra.components.iam import IamArgs, NodeIam
from infra.components.network import Network, NetworkArgs, endpoint_ingress_cidrs, head_ip
from infra.components.observability import Observability, ObservabilityArgs, observability_outputs
from infra.components.secret_token import SecretsKey, SecretsKeyArgs, endpoint_token, ray_cluster_token
from infra.components.weights import Weights, WeightsArgs
from infra.constants import DASHBOARD_PORT, SSH_USER, cluster_name
from infra.program.shared import registry_and_image
from infra.rayconf.serving import serve_config_yaml, serving_outputs
from infra.stack.config import AwsStackConfig
from infra.stack.resolve import Stack, resolve
from infra.stack.serving_hours import schedule_actions

if TYPE_CHECKING:
    # Imported where used: the component's module pulls in pulumi_aws.elasticache, which the
    # offline engine loads only when it is read (infra/program/provider_modules.py), and only a
    # stack with llmfleet:gcsRedis reads it. Here only for the type.
    from infra.components.gcs_redis import GcsRedis
    from infra.components.image import Image
    from infra.components.registry import Registry
    from infra.components.secret_token import SecretToken


def worker_availability_zone(cfg: AwsStackConfig) -> pulumi.Output[str]:
    """The configured AZ, else the first AZ (by name) that offers the GPU instance type."""
    if cfg.availability_zone:
        return pulumi.Output.from_input(cfg.availability_zone)
    offers = aws.ec2.get_instance_type_offerings_output(
        location_type="availability-zone",
        filters=[{"name": "instance-type", "values": [cfg.gpu_instance_type]}],
    )

    def first(locations: list[str]) -> str:
        if not locations:
            raise pulumi.RunError(
                f"llmfleet:gpuInstanceType = {cfg.gpu_instance_type!r}: no AZ of {cfg.region} offers it; "
                "allowed: a type offered in the region, or set llmfleet:availabilityZone"
            )
        return sorted(locations)[0]

    return offers.locations.apply(first)


def head_instance_lookup(group: str, region: str) -> str:
    """A shell expression for the head's running instance id (the head's group replaces it)."""
    return (
        f"$(aws ec2 describe-instances --region {region} "
        f"--filters Name=tag:aws:autoscaling:groupName,Values={group} Name=instance-state-name,Values=running "
        "--query 'Reservations[0].Instances[0].InstanceId' --output text)"
    )


def dashboard_command(group: str, region: str) -> str:
    return (
        f"aws ssm start-session --region {region} --target {head_instance_lookup(group, region)} "
        "--document-name AWS-StartPortForwardingSession "
        f'--parameters \'{{"portNumber":["{DASHBOARD_PORT}"],"localPortNumber":["{DASHBOARD_PORT}"]}}\''
    )


@dataclass
class _Base:
    """What the cluster reads: network, registry + image, weights, tokens, IAM, observability."""

    network: Network
    registry: Registry
    image: Image
    weights: Weights
    token: SecretToken
    ray_token: SecretToken
    iam: NodeIam
    obs: Observability
    gcs: GcsRedis | None = None  # with llmfleet:gcsRedis


def _network(cfg: AwsStackConfig, name: str, az: pulumi.Output[str]) -> Network:

    return Network(
        "net",
        NetworkArgs(
            name=name,
            region=cfg.region,
            vpc_cidr=cfg.vpc_cidr,
            availability_zone=az,
            endpoint_port=cfg.endpoint_port,
            endpoint_cidrs=endpoint_ingress_cidrs(
                cfg.endpoint_allowed_cidrs, cfg.endpoint_public, cfg.vpc_cidr
            ),
            nat_gateway=cfg.nat_gateway,
            public_subnet=cfg.endpoint_public,
            tags=cfg.common_tags,
            nlb_targets_every_host=cfg.gcs_redis,
        ),
    )


def _base(cfg: AwsStackConfig, name: str, az: pulumi.Output[str]) -> _Base:

    tags = cfg.common_tags
    network = _network(cfg, name, az)
    registry, image = registry_and_image(cfg)
    try:
        weights = Weights(
            "weights", WeightsArgs(name=name, model=cfg.model, weights_uri=cfg.weights_uri, tags=tags)
        )
    except ValueError as e:
        raise pulumi.RunError(str(e)) from None
    secrets_key = SecretsKey("secrets", SecretsKeyArgs(stack=cfg.stack, tags=tags))
    token = endpoint_token(cfg.stack, tags, secrets_key.key.key_id)
    ray_token = ray_cluster_token(cfg.stack, tags, secrets_key.key.key_id)
    gcs = None
    if cfg.gcs_redis:
        # start-up: pulumi_aws.elasticache, loaded by the offline engine only when read (see above)
        from infra.components.gcs_redis import GcsRedis, GcsRedisArgs

        gcs = GcsRedis(
            "gcs",
            GcsRedisArgs(
                name=name,
                stack=cfg.stack,
                vpc_id=network.vpc.id,
                subnet_id=network.private_subnet.id,
                cluster_sg_id=network.cluster_sg.id,
                kms_key_id=secrets_key.key.key_id,
                tags=tags,
            ),
        )
    iam = NodeIam(
        "iam",
        IamArgs(
            name=name,
            repository_arn=registry.repository.arn,
            token_parameter_arn=token.parameter.arn,
            ray_token_parameter_arn=ray_token.parameter.arn,
            secrets_key_arn=secrets_key.key.arn,
            weights_bucket=weights.bucket_name,
            weights_prefix=weights.prefix,
            tags=tags,
            worker_health=(name, cfg.stack),
            gcs_redis_token_parameter_arn=gcs.token.parameter.arn if gcs else None,
            adapters_uri=cfg.lora.adapters if cfg.lora else None,
        ),
    )
    obs = Observability(
        "observability",
        ObservabilityArgs(
            name=name,
            region=cfg.region,
            vpc_id=network.vpc.id,
            subnet_id=network.private_subnet.id,
            vpce_sg_id=network.vpce_sg.id,
            role_name=iam.role.name,
            repository_url=registry.repository.repository_url,
            registry_id=registry.repository.registry_id,
            log_retention_days=cfg.log_retention_days,
            tags=tags,
        ),
    )
    return _Base(network, registry, image, weights, token, ray_token, iam, obs, gcs)


def _cluster(
    cfg: AwsStackConfig,
    stack: Stack,
    name: str,
    az: pulumi.Output[str],
    b: _Base,
    target_group_arn: pulumi.Input[str] | None = None,
):

    cat = load_catalog()
    return Cluster(
        "cluster",
        ClusterArgs(
            name=name,
            region=cfg.region,
            model=cfg.model,
            quantization=cfg.effective_quantization,
            max_model_len=stack.plan.max_model_len,
            replicas=cfg.replicas,
            head_type=cat.instances[cfg.head_instance_type],
            worker_type=cat.instances[cfg.gpu_instance_type],
            workers=stack.workers,
            checkpoint_gib=cat.models[cfg.model].checkpoint_gib,
            subnet_id=b.network.private_subnet.id,
            head_ip=head_ip(cfg.vpc_cidr),
            availability_zone=az,
            cluster_sg_id=b.network.cluster_sg.id,
            instance_profile=b.iam.profile.name,
            image_ref=b.image.ref,
            weights_s3_uri=b.weights.s3_uri,
            weights_path=cfg.weights_path,
            model_path=cfg.model_path,
            token_parameter=b.token.parameter.name,
            ray_token_parameter=b.ray_token.parameter.name,
            endpoint_port=cfg.endpoint_port,
            spot=cfg.spot,
            capacity_reservation_id=cfg.capacity_reservation_id,
            capacity_block_id=cfg.capacity_block_id,
            root_volume_gb=cfg.root_volume_gb,
            tags=cfg.common_tags,
            serve_config=serve_config_yaml(cfg, stack.plan),
            tensor_parallel_size=stack.plan.tensor_parallel_size,
            pipeline_parallel_size=stack.plan.pipeline_parallel_size,
            host_metrics=b.obs.host_metrics,
            alarm_topic_arn=cfg.alarm_topic_arn,
            gcs_redis_address=b.gcs.address if b.gcs else None,
            gcs_redis_token_parameter=b.gcs.token.parameter.name if b.gcs else None,
            schedule_actions=schedule_actions(cfg, stack.plan),
            idle_stop_minutes=cfg.idle_stop_minutes,
            target_group_arn=target_group_arn,
        ),
        # The hosts read SSM and pull from ECR at boot: the role's policy must be attached first
        # (depending on the IAM component waits for all of its children).
        opts=pulumi.ResourceOptions(
            depends_on=[
                b.token.parameter,
                b.ray_token.parameter,
                b.network,
                b.iam,
                b.obs,
                *([b.gcs] if b.gcs else []),
            ]
        ),
    )


def _endpoint(cfg: AwsStackConfig, name: str, b: _Base, head_ip: pulumi.Input[str] | None):

    nlb_subnet = b.network.public_subnet if cfg.endpoint_public else b.network.private_subnet
    if nlb_subnet is None:  # Network makes the public subnet whenever the endpoint is public
        raise pulumi.RunError("llmfleet:endpointPublic = true: the network has no public subnet")
    return Endpoint(
        "endpoint",
        EndpointArgs(
            name=name,
            vpc_id=b.network.vpc.id,
            subnet_ids=[nlb_subnet.id],
            security_group_id=b.network.endpoint_sg.id,
            head_ip=head_ip,
            port=cfg.endpoint_port,
            internal=not cfg.endpoint_public,
            certificate_arn=cfg.endpoint_certificate_arn,
            dns_name=cfg.endpoint_dns_name,
            hosted_zone_id=cfg.endpoint_hosted_zone_id,
            tags=cfg.common_tags,
        ),
    )


def build_aws(cfg: AwsStackConfig) -> dict[str, Any]:

    name = cluster_name(cfg)
    stack = resolve(cfg)  # once per program run; everything below gets this one
    az = worker_availability_zone(cfg)
    b = _base(cfg, name, az)
    if cfg.gcs_redis:
        # Every host's proxy serves (infra/components/endpoint.py): the target group comes
        # first, and the head's and the workers' groups register their instances with it.
        endpoint = _endpoint(cfg, name, b, None)
        cluster = _cluster(cfg, stack, name, az, b, endpoint.target_group.arn)
    else:
        cluster = _cluster(cfg, stack, name, az, b)
        endpoint = _endpoint(cfg, name, b, cluster.head.private_ip)
    return {
        "cluster_name": name,
        "region": cfg.region,
        "availability_zone": az,
        "endpoint_url": endpoint.url,
        # The head's fixed address; its instance (an Auto Scaling group of one) is looked up by
        # the group's tag when needed (infra/worker_lookup.py), like the workers'.
        "head_private_ip": cluster.head.private_ip,
        "head_group": cluster.head.group_name,
        "head_container": "llmfleet-head",
        # Workers are Auto Scaling groups: their instances (ids, IPs) come and go without a
        # `pulumi up`, so the stack names the groups; `llmfleet render cluster-yaml` looks the
        # running workers up by the groups' tag.
        "worker_private_ips": [],
        "worker_groups": cluster.workers.group_names,
        "image_ref": b.image.ref,
        "token_parameter": b.token.parameter.name,
        "ray_token_parameter": b.ray_token.parameter.name,
        "dashboard_port_forward_command": dashboard_command(cluster.head.group_name, cfg.region),
        "weights_uri": b.weights.s3_uri,
        "ssh_user": SSH_USER,
        **observability_outputs(b.obs, cfg.region),
        **serving_outputs(cfg, stack.plan, stack.workers),
    }
