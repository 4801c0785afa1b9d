"""Endpoint: NLB -> head:8000, and the token as an SSM SecureString."""

from infra.program.offline import capture


def test_internal_nlb_to_head_and_token_parameter():
    c = capture("prod")
    [nlb] = c.of_type("aws:lb/loadBalancer:LoadBalancer")
    n = nlb["inputs"]
    endpoint_sg = next(
        r["id"]
        for r in c.of_type("aws:ec2/securityGroup:SecurityGroup")
        if r["outputs"]["tags"]["llmfleet:sg"] == "endpoint"
    )
    assert n["loadBalancerType"] == "network" and n["internal"] is True
    assert n["securityGroups"] == [endpoint_sg]
    assert n["subnets"] == [c.named("net-private")["id"]]
    [tg] = c.of_type("aws:lb/targetGroup:TargetGroup")
    assert (tg["inputs"]["port"], tg["inputs"]["protocol"], tg["inputs"]["targetType"]) == (
        8000,
        "TCP",
        "instance",
    )
    assert tg["inputs"]["healthCheck"]["protocol"] == "TCP"
    [att] = c.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    head = c.named("cluster-head")
    assert att["inputs"]["targetId"] == head["id"] and att["inputs"]["port"] == 8000
    [lst] = c.of_type("aws:lb/listener:Listener")
    assert lst["inputs"]["port"] == 8000 and lst["inputs"]["protocol"] == "TCP"
    assert lst["inputs"]["defaultActions"] == [{"type": "forward", "targetGroupArn": tg["outputs"]["arn"]}]
    param = c.named("token-parameter")
    assert param["inputs"]["type"] == "SecureString"
    assert param["inputs"]["value"] == "[secret]"
    assert param["inputs"]["name"] == c.outputs["token_parameter"] == "/llmfleet/prod/endpoint-token"
    pw = c.named("token-value")
    assert pw["inputs"]["length"] >= 32
    assert c.outputs["endpoint_url"] == f"http://{nlb['outputs']['dnsName']}:8000/v1"
    cmd = c.outputs["dashboard_port_forward_command"]
    assert cmd.startswith(f"aws ssm start-session --region us-east-1 --target {head['id']} ")
    assert '"portNumber":["8265"]' in cmd


def test_public_endpoint_is_internet_facing_in_public_subnet():
    c = capture(
        "prod", ["endpointPublic=true", 'endpointAllowedCidrs=["198.51.100.0/24"]', "endpointPort=8443"]
    )
    [nlb] = c.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb["inputs"]["internal"] is False
    assert nlb["inputs"]["subnets"] == [c.named("net-public")["id"]]
    assert c.of_type("aws:lb/listener:Listener")[0]["inputs"]["port"] == 8443
