"""Which change to an EC2 host replaces it and which updates it in place: the explicit choice.

Every host is an Auto Scaling group of one launching from a launch template: the head
(infra/components/head.py) and each GPU worker slot (infra/components/workers.py). Every
template input replaces the group's instance (a new template version starts the group's
instance refresh), so a template holds only hardware and the boot contract
(LAUNCH_TEMPLATE_FIELDS); the groups' own inputs are GROUP_FIELDS. The choice is stated once,
visible in a preview (Pulumi names these fields in the replace diff), and `tests/test_day2.py`
checks the program against it. The provider already replaces on some of these (subnet,
network interfaces, market options); they are listed anyway so the table is complete, not left
to the provider's defaults.

Rule: a host is replaced only when its hardware or its boot contract changes. Everything a
day-2 update carries (image digest, model, weights location, maxModelLen, engine options,
replicas, the Serve config) reaches the host through its node script in SSM (infra/boot/
node_apply.py) and is applied in place.

One-time migration: a stack from before the head group had the head as an `aws.ec2.Instance`;
its next `pulumi up` replaces that instance with the head group's (and the NLB's target group,
now by IP). The head's address becomes the fixed one, so the workers' node script changes too
and the rollout restarts their node containers on the new address (the README's notes).
"""

from __future__ import annotations

REPLACE = "replace"
UPDATE = "update"

# The launch templates (the workers' and the head's; camelCase, as the engine names them in a
# diff): a change to any of these is a new template version, and each group launching from it
# replaces its instance (instance refresh: terminate, then launch).
LAUNCH_TEMPLATE_FIELDS: dict[str, str] = {
    "instanceType": "hardware: GPU count, NVMe layout and EFA cards follow the type",
    "imageId": "boot contract: driver, Docker and the NVIDIA toolkit come from the AMI",
    "blockDeviceMappings": "volume: type, size and encryption of the root volume",
    "networkInterfaces": "hardware: the EFA interfaces and the security group of each",
    "placement": "hardware placement: one cluster placement group",
    "userData": "boot contract: role, region and the node script's parameter name only",
    "instanceMarketOptions": "purchase: spot / capacity block is fixed at launch",
    "capacityReservationSpecification": "purchase: the reservation is fixed at launch",
    "iamInstanceProfile": "the profile a new host launches with",
    "metadataOptions": "IMDS options a new host launches with",
}

# The groups' own inputs (the head's and each worker slot's).
GROUP_FIELDS: dict[str, tuple[str, str]] = {
    "vpcZoneIdentifiers": (REPLACE, "hardware placement: the group (and its instance) moves subnets"),
    "launchTemplate": (REPLACE, "a new template version: instance refresh replaces the instance"),
    "tags": (UPDATE, "tags (model, maxModelLen, replicas) change on the group in place"),
    "healthCheckType": (UPDATE, "EC2 health checks: a group setting"),
    "minSize": (UPDATE, "one instance per slot"),
    "targetGroupArns": (UPDATE, "the NLB's target group the group registers its instance with (gcsRedis)"),
}

# What Pulumi itself replaces the group on (a template version is an in-place group update
# that the group turns into an instance refresh).
GROUP_REPLACE_FIELDS = ["vpcZoneIdentifiers"]

# Change -> what happens -> what a rollout touches on the head / the workers -> downtime. The
# README's table is this list. tests/test_day2.py parses the README's table and checks each row
# against the program: "replaced" rows (worker / head replace-triggering inputs change) and, for
# the third column, the steps whose identity differs between the node scripts rendered before and
# after the change (infra/boot/rollout_effects.py; anything not listed is left running).
CHANGE_EFFECTS: list[tuple[str, str, str, str]] = [
    (
        "Serve config: `maxModelLen`, `engineArgs`, `serveOptions`, `routing`",
        "in place: the head's node script in SSM changes; the rollout (`llmfleet up` / `llmfleet rollout`) "
        "rewrites `/etc/llmfleet/serve.yaml` on the head, whose deploy watcher runs `serve deploy` (Serve "
        "updates the app in place); done when the head reports the new config's fingerprint and a completion "
        "passes",
        "head: serve.yaml; workers: nothing",
        "the engine replicas restart with the new arguments (weights load from local NVMe); Docker, the "
        "containers and the Ray cluster keep running",
    ),
    (
        "`replicas` at the same `workerCount`",
        "in place: the head's deploy command changes (`--replicas`): the rollout rewrites `serve.yaml` and "
        "restarts the deploy watcher, which skips the preflight (the engine holds the GPUs) and deploys",
        "head: serve.yaml, deploy watcher; workers: nothing",
        "the engine replicas are re-placed; Docker, the containers and the Ray cluster keep running",
    ),
    (
        "`model` / `quantization` (same instance type)",
        "in place: new node scripts; each worker stages the new weights onto its NVMe, one host at a time, "
        "replica by replica, and restarts its node container (the model's mount); the head stages the new tokenizer and restarts "
        "its node container, then re-deploys",
        "head: node container, weights, serve.yaml; workers: node container, weights",
        "full: the head container's restart restarts the Ray cluster (GCS); serving stops while the new "
        "weights download and load; no new instances",
    ),
    (
        "`weightsUri` (the same model)",
        "in place: the ready marker holds the checkpoint's URI and manifest hash, so each worker clears its "
        "model directory, stages the new checkpoint and restarts its node container (to advertise the new "
        "weights fingerprint), one worker at a time; the head re-stages the tokenizer and refuses to deploy "
        "while the workers hold different checkpoints",
        "head: weights; workers: node container, weights",
        "serving stops from the first worker's restart until every worker holds the new checkpoint and the "
        "watcher re-deploys (the deploy is gated; Serve's own restart of a lost replica is not); the head "
        "container and the Ray cluster keep running",
    ),
    (
        "node image digest (any change under `ray_cluster/`, `images/`)",
        "in place: the rollout (SSM Run Command, one host at a time, replica by replica, the head last) "
        "restarts the node container and the boot log shipper "
        "(it runs the node image) with the new image; the weights stay on NVMe; the head's deploy watcher "
        "re-deploys when the workers come back",
        "head: node container, metrics agents; workers: node container, metrics agents",
        "a replica is down while one of its hosts restarts (engine reload from NVMe, minutes); the head "
        "container's restart restarts the Ray cluster (GCS)",
    ),
    (
        "`gpuInstanceType`, the AMI, the subnet/AZ, `rootVolumeGb`, spot / capacity settings",
        "replaced: a new worker launch template version; each worker's Auto Scaling group replaces its "
        "instance (instance refresh); a head input of this kind (the AMI, the subnet, `rootVolumeGb`) is a "
        "new head template version, and the head's group replaces the head the same way; a new GPU "
        "model also changes the head's Serve config and deploy command",
        "head: serve.yaml, deploy watcher; workers: replaced",
        "full: new hosts boot and stage the weights again",
    ),
    (
        "`endpointCertificateArn`, `endpointDnsName`",
        "in place: the NLB listener / the Route 53 record change",
        "head: nothing; workers: nothing",
        "none for the hosts; clients switch to `https://`",
    ),
    (
        "`gcsRedis`",
        "in place: the ElastiCache Redis, its auth token and security group are created (or deleted); "
        "the NLB's target group is replaced (the head's address, or an instance target group the head's and "
        "the workers' groups register with); "
        "new node scripts put the store's address (head) and the longer GCS reconnect timeout (every host) "
        "on the node containers' run lines, the API token in the workers' env file and a Serve proxy and "
        "ingress replica on every host in `serve.yaml`, so the rollout restarts each node container, the head last",
        "head: node container, serve.yaml; workers: node container",
        "full, once: the head container's restart starts a new Ray cluster (GCS), now on the store; the "
        "workers rejoin and the watcher re-deploys (weights from NVMe); no new instances",
    ),
    (
        "`alarmTopicArn`",
        "in place: the CloudWatch alarms' ALARM and OK actions change; the groups' launch and terminate "
        "events (each host replacement) go to the topic",
        "head: nothing; workers: nothing",
        "none",
    ),
]
