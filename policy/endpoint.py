"""Stack policies on the serving endpoint: TLS on the load balancer's listeners.

The endpoint carries the bearer token in every request, so a listener without TLS sends it in
clear text: on an internet-facing load balancer that is a mandatory violation, on an internal
one advisory (the VPC is a smaller audience, not a reason). A TLS listener must use a current
policy that allows only TLS 1.2 and 1.3.
"""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ReportViolation, StackValidationArgs, StackValidationPolicy

from ._props import is_unknown
from ._stackview import Res, StackView

LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
TLS_PROTOCOLS = ("TLS", "HTTPS")
# ELB policies that allow only TLS 1.2+ (AWS's "TLS13-1-2-*", "TLS-1-2-*" and "FS-1-2-*" families).
CURRENT_TLS_POLICY_PREFIXES = (
    "ELBSecurityPolicy-TLS13-1-2-",
    "ELBSecurityPolicy-TLS-1-2-",
    "ELBSecurityPolicy-FS-1-2-",
)


def _listener_lb(view: StackView, listener: Res) -> Res | None:
    ref = view.ref(listener, "loadBalancerArn", [LOAD_BALANCER])
    if isinstance(ref, Res):
        return ref
    arn = listener.props.get("loadBalancerArn")
    return next((lb for lb in view.of_type(LOAD_BALANCER) if arn and lb.props.get("arn") == arn), None)


def tls_problems(view: StackView, *, public: bool) -> list[tuple[str, str]]:
    """(urn, message) for each listener of a public (or internal) load balancer without current TLS."""
    out = []
    for listener in view.of_type(LISTENER):
        lb = _listener_lb(view, listener)
        if lb is None:
            continue
        internal = lb.props.get("internal")
        if is_unknown(internal) or (internal is not True) != public:
            continue
        where = f"{lb.name} ({'internet-facing' if public else 'internal'}): listener {listener.name}"
        protocol = listener.props.get("protocol")
        if is_unknown(protocol):
            continue
        if protocol not in TLS_PROTOCOLS:
            out.append(
                (
                    listener.urn,
                    f"{where} speaks {protocol} on port {listener.props.get('port')}: the bearer token "
                    "crosses the network in clear text; set llmfleet:endpointCertificateArn (ACM) for TLS",
                )
            )
            continue
        policy = listener.props.get("sslPolicy")
        if not is_unknown(policy) and not str(policy or "").startswith(CURRENT_TLS_POLICY_PREFIXES):
            out.append(
                (
                    listener.urn,
                    f"{where} uses TLS policy {policy!r}; allowed: a TLS 1.2+ policy such as ELBSecurityPolicy-TLS13-1-2-2021-06",
                )
            )
    return out


def _public_tls(args: StackValidationArgs, report: ReportViolation) -> None:
    for urn, message in tls_problems(StackView.of(args.resources), public=True):
        report(message, urn)


def _internal_tls(args: StackValidationArgs, report: ReportViolation) -> None:
    for urn, message in tls_problems(StackView.of(args.resources), public=False):
        report(message, urn)


ENDPOINT_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(
        name="endpoint-tls-public",
        description="An internet-facing load balancer listens only with TLS (a TLS 1.2+ policy).",
        enforcement_level=EnforcementLevel.MANDATORY,
        validate=_public_tls,
    ),
    StackValidationPolicy(
        name="endpoint-tls-internal",
        description="An internal load balancer listens with TLS (a TLS 1.2+ policy); advisory.",
        enforcement_level=EnforcementLevel.ADVISORY,
        validate=_internal_tls,
    ),
]
