"""Reading what the hosts run from an offline capture: the node scripts in SSM."""

from infra.boot.node_apply import node_parameter_name, unpack_script


def node_script(c, role: str) -> str:
    """The node script (infra/boot/cloud_init.py) that hosts of `role` apply, unpacked."""
    [param] = [
        p
        for p in c.of_type("aws:ssm/parameter:Parameter")
        if p["inputs"]["name"] == node_parameter_name(c.stack, role)
    ]
    return unpack_script(param["inputs"]["insecureValue"])
