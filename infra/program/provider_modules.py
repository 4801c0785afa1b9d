"""Load only the pulumi_aws resource modules the program touches (for the offline engine).

pulumi_aws makes each service package (`pulumi_aws.ec2`, `.s3`, ...) lazy, but the first
attribute read of one runs its generated `__init__`, which imports every resource module of
that service: `aws.ec2.Instance` loads all ~180 ec2 modules (0.6 s here) to use a dozen. Under
`light_packages()` a service package that has not been loaded yet is replaced by an unexecuted
module of the same spec whose `__getattr__` imports just the module that defines the name asked
for (`SecurityGroupIngressRule` -> `security_group_ingress_rule.py`, `InstanceArgs` ->
`instance.py`; then the shared `_inputs`, `outputs`, `_enums`). A name found nowhere that way
runs the package's own `__init__` into the same module object, so the answer is always the
provider's own class: the same SDK code registers the same resources, only fewer modules load.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from typing import Any

PROVIDER = "pulumi_aws"
_SHARED = ("_inputs", "outputs", "_enums")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def module_candidates(name: str) -> list[str]:
    """The generated module names that may define `name`, most likely first."""
    out = [_snake(name)]
    for suffix in ("Args", "_output"):  # FooArgs beside Foo; get_foo_output beside get_foo
        if name.endswith(suffix) and len(name) > len(suffix):
            out.append(_snake(name[: -len(suffix)]))
    return out + list(_SHARED)


def _submodule_exists(package: types.ModuleType, sub: str) -> bool:
    return importlib.util.find_spec(f"{package.__name__}.{sub}") is not None


def _light(full_name: str) -> types.ModuleType:
    spec = importlib.util.find_spec(full_name)
    assert spec is not None and spec.loader is not None, full_name
    loader = spec.loader
    mod = importlib.util.module_from_spec(spec)  # not executed: no resource module loads yet
    loaded = False

    def import_sub(sub: str) -> types.ModuleType:
        m = importlib.import_module(f"{full_name}.{sub}")
        # get_ami.py defines get_ami: the package's star import binds that over the submodule
        # the import system set as the package's attribute; do the same.
        own = getattr(m, sub, None)
        if own is not None and not isinstance(own, types.ModuleType):
            setattr(mod, sub, own)
        return m

    def __getattr__(name: str) -> Any:
        nonlocal loaded
        if name.startswith("__") or loaded:
            raise AttributeError(f"module {full_name!r} has no attribute {name!r}")
        if _submodule_exists(mod, name):  # `from . import outputs` in a resource module; get_ami
            sub = import_sub(name)
            return types.ModuleType.__getattribute__(mod, name) if name in vars(mod) else sub
        for sub in module_candidates(name):
            if _submodule_exists(mod, sub):
                value = getattr(import_sub(sub), name, None)
                if value is not None:
                    setattr(mod, name, value)
                    return value
        # Not where the generator puts it: run the package's own __init__ (it reuses the
        # modules already loaded, so classes stay identical) and answer from that.
        loaded = True
        loader.exec_module(mod)
        return types.ModuleType.__getattribute__(mod, name)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]  # PEP 562: module __getattr__
    return mod


def light_packages() -> list[str]:
    """Swap every not-yet-loaded service package of pulumi_aws for a light one; the names swapped.
    Idempotent; a package something already loaded is left as it is."""
    provider = importlib.import_module(PROVIDER)
    swapped = []
    for attr, value in list(vars(provider).items()):
        # pulumi's lazy modules are ModuleType subclasses until first use turns them into plain ones.
        if not isinstance(value, types.ModuleType) or type(value) is types.ModuleType:
            continue
        if not value.__name__.startswith(PROVIDER + "."):
            continue
        light = _light(value.__name__)
        sys.modules[value.__name__] = light
        setattr(provider, attr, light)
        swapped.append(value.__name__)
    return swapped
