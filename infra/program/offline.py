"""The offline engine: run the real Pulumi program under a recording mock monitor.

No Pulumi CLI and no cloud: `capture(stack, overrides)` reads stacks/Pulumi.<stack>.yaml
(plus the project defaults in Pulumi.yaml and `-c KEY=VALUE` overrides), runs
__main__.py inside `run_in_stack` exactly as the Python language host does, and
records every registered resource (type, logical name, parent, inputs as Pulumi
passes them) with plausible outputs, plus the stack outputs.

Traps handled (from Pulumi's issue tracker):
- preview=False, so every output the mocks return is known and `apply` runs; a stack
  output that still resolves to None or unknown is an error, never a silent skip.
- duplicate URNs (same type + logical name + parent chain) are an error; the mock
  monitor would otherwise accept them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pmocks
from pulumi.runtime import resource as presource
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource, set_root_resource
from pulumi.runtime.stack import run_in_stack
from pulumi.runtime.sync_await import _sync_await

from infra.constants import REPO_ROOT
from infra.stack.config import SECRET_PLACEHOLDER, StackConfig, load_stack_config
from infra.stack.files import raw_stack_config

PROJECT = "llmfleet"
ACCOUNT = "123456789012"
UNKNOWN_PLACEHOLDER = "[unknown]"


class OfflineError(RuntimeError):
    """The program could not be captured; str() is one line."""


# ---------------------------------------------------------------------------
# Mocks: plausible outputs per resource type
# ---------------------------------------------------------------------------
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

    def new_resource(self, args: pmocks.MockResourceArgs):
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


# ---------------------------------------------------------------------------
# The recording monitor
# ---------------------------------------------------------------------------
def _clean(value: Any) -> tuple[Any, list[str]]:
    """Secrets -> "[secret]", unknowns -> "[unknown]" (and reported), resources -> URN."""
    unknown: list[str] = []

    def walk(v: Any, path: str) -> Any:
        if rpc.is_rpc_secret(v):
            return SECRET_PLACEHOLDER
        if isinstance(v, pulumi.output.Unknown) or v is rpc.UNKNOWN:
            unknown.append(path)
            return UNKNOWN_PLACEHOLDER
        if isinstance(v, dict):
            return {k: walk(x, f"{path}.{k}" if path else k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, pulumi.Resource):
            return "[resource]"
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)  # protobuf carries every number as a double
        return v

    return walk(value, ""), unknown


class RecordingMonitor(pmocks.MockMonitor):
    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.records: list[dict[str, Any]] = []
        self.by_urn: dict[str, dict[str, Any]] = {}
        self.duplicates: list[str] = []
        self.stack_outputs: dict[str, Any] | None = None
        self.unknown_inputs: list[str] = []

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        # As the engine does: children of the root stack carry no "pulumi:pulumi:Stack$" prefix.
        urn = super().make_urn(parent, type_, name)
        return urn.replace("::pulumi:pulumi:Stack$", "::", 1)

    def RegisterResource(self, request):
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type != "pulumi:pulumi:Stack":
            if urn in self.by_urn:
                self.duplicates.append(urn)
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            clean, unknown = _clean(inputs)
            self.unknown_inputs += [f"{request.name}.{p}" for p in unknown]
            parent = None
            if request.parent and request.parent.split("::")[2].split("$")[-1] != "pulumi:pulumi:Stack":
                parent = request.parent.split("::")[-1]
            rec = {
                "type": request.type,
                "name": request.name,
                "parent": parent,
                "urn": urn,
                "dependencies": sorted(request.dependencies),
                "custom": bool(request.custom),
                # Inputs whose change replaces the resource (the replace_on_changes option).
                "replace_on_changes": sorted(request.replaceOnChanges),
                "inputs": clean,
                "outputs": {},
            }
            self.records.append(rec)
            self.by_urn[urn] = rec
        resp = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack" and urn in self.by_urn:
            state = self.resources.get(urn)
            if state is not None:
                self.by_urn[urn]["outputs"] = _clean(dict(state.state))[0]
                self.by_urn[urn]["id"] = state.id
        return resp

    def RegisterResourceOutputs(self, request):
        if "::pulumi:pulumi:Stack::" in request.urn:
            outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
            self.stack_outputs = outputs
        return super().RegisterResourceOutputs(request)


# ---------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------
@dataclass
class Capture:
    stack: str
    config: StackConfig
    raw_config: dict[str, str]
    resources: list[dict[str, Any]]
    outputs: dict[str, Any]
    invokes: list[str] = field(default_factory=list)

    def of_type(self, type_token: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_token]

    def named(self, name: str) -> dict[str, Any]:
        return next(r for r in self.resources if r["name"] == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "resources": [{k: r[k] for k in ("type", "name", "parent", "inputs")} for r in self.resources],
            "outputs": self.outputs,
        }


def _none_paths(v: Any, path: str) -> list[str]:
    if v is None:
        return [path]
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _none_paths(x, f"{path}.{k}")]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _none_paths(x, f"{path}[{i}]")]
    return []


def _no_stack_trace():
    return presource.source_pb2.StackTrace()


def capture(
    stack: str, overrides: Sequence[str] = (), project_dir: Path = REPO_ROOT, program: Path | None = None
) -> Capture:
    """Run the real program for `stack` under the recording mocks."""
    raw, secret_keys = raw_stack_config(stack, overrides, project_dir)
    cfg = load_stack_config(raw, stack)  # fail fast, before any resource registers
    mocks = RecordingMocks(cfg.region, cfg.vpc_cidr)
    monitor = RecordingMonitor(mocks)

    # Source positions only annotate the engine's diagnostics; collecting them reads the source
    # of every frame for every resource (a quarter of a large capture's time). None reach us.
    presource._get_stack_trace = _no_stack_trace
    # A loop of our own, closed at the end: a loop left for the garbage collector at
    # interpreter exit fails noisily once other libraries (ray) have closed its self-pipe.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    set_root_resource(None)
    pmocks.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    set_root_resource(None)  # set_mocks registered a bare stack; run_in_stack makes the real one
    pulumi.runtime.set_all_config(raw, sorted(secret_keys))
    main = program or project_dir / "__main__.py"

    old_path = list(sys.path)
    sys.path.insert(0, str(project_dir))
    old_cwd = os.getcwd()
    os.chdir(project_dir)
    exported: list[str] = []

    def program() -> None:
        runpy.run_path(str(main), run_name="__main__")
        exported.extend(get_root_resource().outputs)

    try:
        _sync_await(run_in_stack(program))
    except Exception as e:  # noqa: BLE001 - shown as one line
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise OfflineError(f"program failed for stack {stack}: {type(e).__name__}: {msg}") from e
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        set_root_resource(None)
        # Pulumi's runtime config is process-wide: the next capture, and the policy runner, must
        # not see this stack's values (the runner is handed the StackConfig it checks).
        pulumi.runtime.set_all_config({}, [])
        loop.close()
        asyncio.set_event_loop(None)

    if monitor.duplicates:
        raise OfflineError(
            f"duplicate resource URN {monitor.duplicates[0]}: each logical name must be unique per "
            "type and parent"
        )
    outputs, unknown = _clean(monitor.stack_outputs or {})
    # None values never reach the monitor: compare with what the program exported.
    missing = [f"outputs.{k}" for k in exported if k not in outputs] + _none_paths(outputs, "outputs")
    if unknown or missing:
        first = (unknown or missing)[0]
        raise OfflineError(
            f"stack output {first} is unknown after the offline run: a mock returns no value for it"
        )
    return Capture(
        stack=stack,
        config=cfg,
        raw_config=raw,
        resources=monitor.records,
        outputs=outputs,
        invokes=list(mocks.calls),
    )


def redacted_config(raw: Mapping[str, str], secret_keys: set[str]) -> dict[str, str]:
    return {k: (SECRET_PLACEHOLDER if k in secret_keys else v) for k, v in raw.items()}
