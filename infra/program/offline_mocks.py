"""The offline engine's mocks: plausible outputs per resource type and per invoke.

Every output the program or a test reads must come back known (capture() runs with
preview=False), so each type the program registers that has read outputs gets them here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks

ACCOUNT = "123456789012"


def _h(*parts: Any, n: int = 17) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:n]


ID_PREFIX = {
    "aws:ec2/vpc:Vpc": "vpc-",
    "aws:amp/workspace:Workspace": "ws-",
    "aws:ec2/subnet:Subnet": "subnet-",
    "aws:ec2/securityGroup:SecurityGroup": "sg-",
    "aws:ec2/instance:Instance": "i-",
    "aws:ec2/routeTable:RouteTable": "rtb-",
    "aws:ec2/internetGateway:InternetGateway": "igw-",
    "aws:ec2/natGateway:NatGateway": "nat-",
    "aws:ec2/eip:Eip": "eipalloc-",
    "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce-",
    "aws:ec2/placementGroup:PlacementGroup": "pg-",
    "aws:ec2/launchTemplate:LaunchTemplate": "lt-",
    "aws:ec2/networkInterface:NetworkInterface": "eni-",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": "sgr-",
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": "sgr-",
}


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self, region: str, vpc_cidr: str):
        self.region = region
        self._ips = ipaddress.ip_network(vpc_cidr).hosts()
        for _ in range(9):  # skip the addresses AWS reserves at the start of a range
            next(self._ips)
        self.calls: list[str] = []

    def _arn(self, service: str, kind: str, name: str) -> str:
        return f"arn:aws:{service}:{self.region}:{ACCOUNT}:{kind}/{name}"

    def new_resource(self, args: pmocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        t, name, inputs = args.typ, args.name, dict(args.inputs)
        rid = ID_PREFIX.get(t, f"{name}-") + _h(t, name)
        service = t.split(":")[1].split("/")[0] if ":" in t else "mock"
        out: dict[str, Any] = {
            **inputs,
            "id": rid,
            "arn": self._arn(service, t.rsplit(":", 1)[-1].lower(), name),
        }
        if t == "aws:ec2/instance:Instance":
            ip = str(next(self._ips))
            out.update(
                privateIp=ip,
                privateDns=f"ip-{ip.replace('.', '-')}.ec2.internal",
                primaryNetworkInterfaceId="eni-" + _h(name),
                instanceState="running",
            )
        elif t == "aws:ec2/networkInterface:NetworkInterface":
            # A fixed address (the head's) is the one asked for; else the next free one.
            ips = inputs.get("privateIps") or [str(next(self._ips))]
            out.update(
                privateIp=ips[0],
                privateIps=list(ips),
                macAddress="0a:" + ":".join(_h(name, n=10)[i : i + 2] for i in range(0, 10, 2)),
            )
        elif t == "aws:elasticache/replicationGroup:ReplicationGroup":
            rg = inputs.get("replicationGroupId", name)
            out.update(
                primaryEndpointAddress=f"master.{rg}.{_h(name, n=6)}.use1.cache.amazonaws.com",
                memberClusters=[f"{rg}-001"],
            )
        elif t == "aws:ec2/launchTemplate:LaunchTemplate":
            out.update(latestVersion=1, defaultVersion=1, name=inputs.get("name", name))
        elif t == "aws:ecr/repository:Repository":
            repo = inputs.get("name", name)
            out.update(
                repositoryUrl=f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{repo}",
                registryId=ACCOUNT,
                name=repo,
            )
        elif t == "docker-build:index:Image":
            digest = "sha256:" + _h(json.dumps(inputs, sort_keys=True, default=str), n=64)
            tags = inputs.get("tags") or [f"{name}:latest"]
            out.update(digest=digest, ref=f"{str(tags[0]).rsplit(':', 1)[0]}@{digest}")
        elif t == "aws:lb/loadBalancer:LoadBalancer":
            out.update(
                dnsName=f"{name}-{_h(name, n=8)}.elb.{self.region}.amazonaws.com",
                zoneId="Z26RNL4JYFTOTI",
                arnSuffix=f"net/{name}/{_h(name, n=16)}",
            )
        elif t == "aws:lb/targetGroup:TargetGroup":
            out.update(arnSuffix=f"targetgroup/{name}/{_h(name, n=16)}")
        elif t == "aws:ec2/vpc:Vpc":
            out.update(
                defaultSecurityGroupId="sg-" + _h("default", name), mainRouteTableId="rtb-" + _h("main", name)
            )
        elif t in ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
            bucket = inputs.get("bucket") or f"{name}-{_h(name, n=7)}"
            out.update(
                bucket=bucket,
                arn=f"arn:aws:s3:::{bucket}",
                bucketRegionalDomainName=f"{bucket}.s3.amazonaws.com",
            )
        elif t == "aws:ssm/parameter:Parameter":
            pname = inputs.get("name", name)
            # As AWS writes it: a path name "/a/b" is "parameter/a/b" in the ARN.
            path = pname if str(pname).startswith("/") else f"/{pname}"
            out.update(name=pname, version=1, arn=f"arn:aws:ssm:{self.region}:{ACCOUNT}:parameter{path}")
        elif t in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile", "aws:iam/policy:Policy"):
            kind = t.rsplit(":", 1)[-1]
            kind = {"InstanceProfile": "instance-profile"}.get(kind, kind.lower())
            nm = inputs.get("name") or f"{name}-{_h(name, n=7)}"
            out.update(
                name=nm, arn=f"arn:aws:iam::{ACCOUNT}:{kind}/{nm}", uniqueId="AROA" + _h(name, n=16).upper()
            )
        elif t == "aws:kms/key:Key":
            kid = f"{_h(name, n=8)}-{_h(name, 1, n=4)}-{_h(name, 2, n=4)}-{_h(name, 3, n=4)}-{_h(name, 4, n=12)}"
            out.update(keyId=kid, arn=f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{kid}")
        elif t == "aws:kms/alias:Alias":
            alias = inputs.get("name", f"alias/{name}")  # as AWS writes it: arn:...:alias/<path>
            out.update(name=alias, arn=f"arn:aws:kms:{self.region}:{ACCOUNT}:{alias}")
        elif t == "aws:amp/workspace:Workspace":
            ws = rid
            out.update(
                arn=f"arn:aws:aps:{self.region}:{ACCOUNT}:workspace/{ws}",
                prometheusEndpoint=f"https://aps-workspaces.{self.region}.amazonaws.com/workspaces/{ws}/",
            )
        elif t == "aws:cloudwatch/logGroup:LogGroup":
            nm = inputs.get("name", name)
            out.update(name=nm, arn=f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{nm}")
        elif t.startswith("random:index/random"):
            out.update(result="mock-" + _h(name, n=32))
        elif t == "command:remote:Command":
            out.update(stdout="", stderr="")
        return rid, out

    def call(self, args: pmocks.MockCallArgs):
        tok, a = args.token, dict(args.args)
        self.calls.append(tok)
        if tok == "aws:ec2/getAmi:getAmi":
            return {
                "id": "ami-0123456789abcdef0",
                "imageId": "ami-0123456789abcdef0",
                "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20260101",
                "architecture": "x86_64",
                "rootDeviceName": "/dev/sda1",
                "ownerId": "898082745236",
            }
        if tok == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": "mock-ecr-password",
                "authorizationToken": "QVdTOm1vY2s=",
                "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com",
                "id": self.region,
            }
        if tok in ("aws:index/getAvailabilityZones:getAvailabilityZones",):
            names = [f"{self.region}{s}" for s in "abcdef"]
            return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(1, 7)], "id": self.region}
        if tok == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/offline",
                "userId": "AIDAOFFLINE",
                "id": ACCOUNT,
            }
        if tok == "aws:index/getRegion:getRegion":
            return {
                "name": self.region,
                "region": self.region,
                "id": self.region,
                "endpoint": f"ec2.{self.region}.amazonaws.com",
            }
        if tok == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if tok == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            locs = [f"{self.region}{s}" for s in "abc"]
            return {
                "locations": locs,
                "instanceTypes": [a.get("filters", [{}])[0].get("values", ["?"])[0]] * len(locs),
                "locationTypes": ["availability-zone"] * len(locs),
                "id": self.region,
            }
        return {}
