"""The offline engine's light pulumi_aws packages: the provider's own classes, fewer modules."""

import json
import subprocess
import sys

from infra.constants import REPO_ROOT
from infra.program.provider_modules import module_candidates

# In a fresh interpreter, so no other test has loaded a package fully first. For each shipped
# stack it captures under the light packages, recording every name the program reads from one;
# then it runs each package's own __init__ and checks the names against the full package.
PROBE = r"""
import json, sys
from infra.program import provider_modules
from infra.program.offline import capture
from infra.stack.files import available_stacks

asked, full_inits = [], []
light = provider_modules._light

def recording(full_name):
    mod = light(full_name)
    inner = mod.__getattr__
    def __getattr__(name):
        value = inner(name)
        asked.append((full_name, name))
        return value
    mod.__getattr__ = __getattr__
    return mod

provider_modules._light = recording
for stack in available_stacks():
    capture(stack)
    for name, mod in sys.modules.items():
        if name.startswith("pulumi_aws.") and "__path__" in vars(mod) and "_utilities" in vars(mod):
            full_inits.append(name)
loaded = sorted(m for m in sys.modules if m.startswith("pulumi_aws.") and m.count(".") == 2)
# names of each kind the generator makes, whether or not the program reads them today
for full_name, name in [("pulumi_aws.ec2", "get_ami"), ("pulumi_aws.ec2", "InstanceArgs"),
                        ("pulumi_aws.ec2", "InstanceMetadataOptionsArgs"), ("pulumi_aws.iam", "get_policy_document_output")]:
    getattr(sys.modules[full_name], name)
    asked.append((full_name, name))  # a name read before is an attribute now: no __getattr__ call
got = {}  # every answer first, then each package's own __init__ once, into the same module
for full_name, name in sorted(set(asked)):
    mod = sys.modules[full_name]
    got[full_name, name] = vars(mod).get(name) or sys.modules.get(f"{full_name}.{name}")
for full_name in sorted({p for p, _ in got}):
    sys.modules[full_name].__spec__.loader.exec_module(sys.modules[full_name])
same = [[p, n, v is getattr(sys.modules[p], n)] for (p, n), v in sorted(got.items())]
print(json.dumps({"same": same, "full_inits": sorted(set(full_inits)), "loaded": len(loaded)}))
"""


def test_names_resolve_to_the_full_packages_objects_without_loading_them():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    resources = [(p, n) for p, n, _ in out["same"] if n[0].isupper()]
    assert ("pulumi_aws.ec2", "LaunchTemplate") in resources  # the probe saw the program's reads
    assert ["pulumi_aws.ec2", "get_ami", True] in out["same"]  # the function, not its module
    assert all(ok for _, _, ok in out["same"]), [r for r in out["same"] if not r[2]]
    # every read found its module where the generator puts it: no package ran its own __init__
    assert out["full_inits"] == []
    assert out["loaded"] < 400  # of ~2,000 resource modules in the services the program uses


def test_module_candidates_follow_the_generators_file_names():
    assert module_candidates("SecurityGroupIngressRule")[0] == "security_group_ingress_rule"
    assert module_candidates("InstanceArgs")[:2] == ["instance_args", "instance"]
    assert module_candidates("get_ami_output")[:2] == ["get_ami_output", "get_ami"]
    assert module_candidates("Eip")[-3:] == ["_inputs", "outputs", "_enums"]
