"""Endpoint: NLB -> head:8000, and the token as an SSM SecureString."""

from tests.captures import capture


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
        "ip",  # the head's fixed address: a replaced head is the same target
    )
    assert tg["inputs"]["healthCheck"]["protocol"] == "TCP"
    [att] = c.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    eni = c.named("cluster-head-eni")
    assert att["inputs"]["targetId"] == eni["outputs"]["privateIp"] == c.outputs["head_private_ip"]
    assert att["inputs"]["port"] == 8000
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
    # the head's instance changes with each replacement: the command looks it up by its group
    assert cmd.startswith("aws ssm start-session --region us-east-1 --target $(aws ec2 describe-instances ")
    assert f"Values={c.outputs['head_group']} " in cmd
    assert '"portNumber":["8265"]' in cmd


def test_public_endpoint_is_internet_facing_in_public_subnet():
    c = capture(
        "prod", ["endpointPublic=true", 'endpointAllowedCidrs=["198.51.100.0/24"]', "endpointPort=8443"]
    )
    [nlb] = c.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert nlb["inputs"]["internal"] is False
    assert nlb["inputs"]["subnets"] == [c.named("net-public")["id"]]
    assert c.of_type("aws:lb/listener:Listener")[0]["inputs"]["port"] == 8443


CERT = "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"


def test_certificate_makes_a_tls_listener_and_an_https_url():
    from infra.components.endpoint import TLS_POLICY

    c = capture("prod", [f"llmfleet:endpointCertificateArn={CERT}"])
    [nlb] = c.of_type("aws:lb/loadBalancer:LoadBalancer")
    [lst] = c.of_type("aws:lb/listener:Listener")
    assert (lst["inputs"]["protocol"], lst["inputs"]["certificateArn"]) == ("TLS", CERT)
    assert lst["inputs"]["sslPolicy"] == TLS_POLICY == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert c.outputs["endpoint_url"] == f"https://{nlb['outputs']['dnsName']}:8000/v1"
    # TLS ends on the NLB; the hop to the head stays TCP inside the VPC
    assert c.of_type("aws:lb/targetGroup:TargetGroup")[0]["inputs"]["protocol"] == "TCP"
    assert not c.of_type("aws:route53/record:Record")


def test_dns_name_gets_a_route53_alias_and_names_the_url():
    c = capture(
        "prod",
        [
            f"llmfleet:endpointCertificateArn={CERT}",
            "llmfleet:endpointDnsName=llm.example.com",
            "llmfleet:endpointHostedZoneId=Z0123456789ABC",
        ],
    )
    [nlb] = c.of_type("aws:lb/loadBalancer:LoadBalancer")
    [rec] = c.of_type("aws:route53/record:Record")
    assert (rec["inputs"]["name"], rec["inputs"]["type"], rec["inputs"]["zoneId"]) == (
        "llm.example.com",
        "A",
        "Z0123456789ABC",
    )
    assert rec["inputs"]["aliases"] == [
        {"name": nlb["outputs"]["dnsName"], "zoneId": nlb["outputs"]["zoneId"], "evaluateTargetHealth": True}
    ]
    assert c.outputs["endpoint_url"] == "https://llm.example.com:8000/v1"


def test_tls_policy_fails_a_public_endpoint_without_tls_and_advises_an_internal_one():
    from policy.runner import run_policies, stack_policy_config

    public = ["endpointPublic=true", 'endpointAllowedCidrs=["198.51.100.0/24"]']
    for overrides, mandatory, advisory in (
        (public, ["endpoint-tls-public"], []),
        ([*public, f"llmfleet:endpointCertificateArn={CERT}"], [], []),
        ([], [], ["endpoint-tls-internal"]),
        ([f"llmfleet:endpointCertificateArn={CERT}"], [], []),
    ):
        c = capture("prod", overrides)
        report = run_policies(c.resources, stack_policy_config(c.config), stack=c.config)
        assert [v.policy for v in report.violations if v.enforcement == "mandatory"] == mandatory, overrides
        # (prod's alarms notify nobody without llmfleet:alarmTopicArn: alarm-notifies, not TLS)
        advised = [
            v.policy
            for v in report.violations
            if v.enforcement == "advisory" and v.policy != "alarm-notifies"
        ]
        assert advised == advisory, overrides
        if mandatory:
            assert "clear text" in report.violations[0].message


def _tls_problems(*resources, public=True):
    from policy._stackview import StackView
    from policy.endpoint import tls_problems
    from policy.runner import policy_resources

    rs = [
        {
            "type": t,
            "name": name,
            "urn": f"urn:pulumi:t::llmfleet::{t}::{name}",
            "inputs": props,
            "outputs": props,
            "id": rid,
        }
        for t, name, rid, props in resources
    ]
    return [
        (urn.rsplit("::", 1)[1], msg)
        for urn, msg in tls_problems(StackView.of(policy_resources(rs)), public=public)
    ]


LB_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/llm/0123"
LB = ("aws:lb/loadBalancer:LoadBalancer", "nlb", LB_ARN, {"internal": False})
LB_T = "aws:lb/listener:Listener"


def test_a_listener_finds_its_load_balancer_by_id_or_by_arn():
    # after `up` a load balancer's id is its ARN; under the mocks its arn is an output of its own
    for lb in (LB, (*LB[:2], "lb-id", {"internal": False, "arn": LB_ARN})):
        problems = _tls_problems(
            lb, (LB_T, "l", "l-id", {"loadBalancerArn": LB_ARN, "protocol": "TCP", "port": 8000})
        )
        assert [name for name, _ in problems] == ["l"], lb
        assert problems[0][1].startswith("nlb (internet-facing): listener l speaks TCP on port 8000")
        assert (
            _tls_problems(
                lb, (LB_T, "l", "l-id", {"loadBalancerArn": LB_ARN, "protocol": "TCP"}), public=False
            )
            == []
        )


def test_a_listener_of_a_load_balancer_outside_the_stack_is_not_this_stacks():
    other = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/other/9"
    listener = (LB_T, "l", "l-id", {"loadBalancerArn": other, "protocol": "TCP", "port": 80})
    assert _tls_problems(LB, listener) == []
    assert _tls_problems(listener) == []


def test_a_tls_violation_names_the_listener():
    from policy import policies as pack
    from policy.runner import run_policies

    for internal, policy in ((False, "endpoint-tls-public"), (True, "endpoint-tls-internal")):
        lb = {"type": LB[0], "name": "nlb", "urn": "urn:pulumi:t::llmfleet::lb::nlb", "id": LB_ARN}
        lb["inputs"] = lb["outputs"] = {"internal": internal}
        props = {"loadBalancerArn": LB_ARN, "protocol": "TCP", "port": 8000}
        listener = {"type": LB_T, "name": "l", "urn": "urn:pulumi:t::llmfleet::listener::l", "id": "l-id"}
        listener["inputs"] = listener["outputs"] = props
        report = run_policies([lb, listener], {}, policies=[pack.by_name()[policy]])
        assert [(v.policy, v.resource) for v in report.violations] == [(policy, "l")]


def test_listeners_of_other_or_unknown_load_balancers_are_skipped_not_the_rest():
    external = (LB_T, "a-external", "a-id", {"loadBalancerArn": "arn:aws:elb:other", "protocol": "TCP"})
    ours = (LB_T, "b-ours", "b-id", {"loadBalancerArn": LB_ARN, "protocol": "TCP", "port": 8000})
    assert [name for name, _ in _tls_problems(LB, external, ours)] == ["b-ours"]
    # internal or not is known only at `up`: neither policy can tell yet
    unknown = (*LB[:3], {"internal": "[unknown]"})
    for public in (True, False):
        assert _tls_problems(unknown, ours, public=public) == []


def test_every_listener_is_checked_and_each_message_says_what_to_do():
    internal_arn = LB_ARN.replace("/llm/", "/inner/")
    inner = ("aws:lb/loadBalancer:LoadBalancer", "inner", internal_arn, {"internal": True})
    unk = "[unknown]"
    listeners = [  # in this order: a skipped or a failing listener never ends the scan
        (LB_T, "l1-inner", "l1", {"loadBalancerArn": internal_arn, "protocol": "TCP", "port": 80}),
        (LB_T, "l2-unknown", "l2", {"loadBalancerArn": LB_ARN, "protocol": unk, "port": 81}),
        (LB_T, "l3-tcp", "l3", {"loadBalancerArn": LB_ARN, "protocol": "TCP", "port": 8000}),
        (LB_T, "l4-policy-unknown", "l4", {"loadBalancerArn": LB_ARN, "protocol": "TLS", "sslPolicy": unk}),
        (
            LB_T,
            "l5-old",
            "l5",
            {"loadBalancerArn": LB_ARN, "protocol": "TLS", "sslPolicy": "ELBSecurityPolicy-2016-08"},
        ),
        (
            LB_T,
            "l6-ok",
            "l6",
            {
                "loadBalancerArn": LB_ARN,
                "protocol": "HTTPS",
                "sslPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
            },
        ),
        (LB_T, "l7-none", "l7", {"loadBalancerArn": LB_ARN, "protocol": "TLS"}),
    ]
    clear = "the bearer token crosses the network in clear text; set llmfleet:endpointCertificateArn (ACM) for TLS"
    tls = "allowed: a TLS 1.2+ policy such as ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert _tls_problems(LB, inner, *listeners) == [
        ("l3-tcp", f"nlb (internet-facing): listener l3-tcp speaks TCP on port 8000: {clear}"),
        (
            "l5-old",
            f"nlb (internet-facing): listener l5-old uses TLS policy 'ELBSecurityPolicy-2016-08'; {tls}",
        ),
        ("l7-none", f"nlb (internet-facing): listener l7-none uses TLS policy None; {tls}"),
    ]
    assert _tls_problems(LB, inner, *listeners, public=False) == [
        ("l1-inner", f"inner (internal): listener l1-inner speaks TCP on port 80: {clear}")
    ]
