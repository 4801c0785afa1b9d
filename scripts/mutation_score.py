"""The mutation score of `make mutation`, per module, from mutmut's results in mutants/.

    python scripts/mutation_score.py [--check PERCENT] PATTERN...

PATTERN: the mutant-name globs the run was given (the Makefile's MUTATE). Killed and timed-out
mutants count as killed; the mutants listed in EQUIVALENT below (each with the reason no test can
tell it from the original) leave the denominator. Exits 1 when --check is given and a module or
the total scores below it, or when a mutant was never checked.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")

# mutant name -> why no test can tell it from the original (benchmarks/RESULTS.md lists them too).
# Names are mutmut's (module.function__mutmut_N): a change to the function renumbers its mutants,
# so a re-run after an edit checks this list again (a listed name that survives no more, or that
# no longer exists, is reported).
_DEFAULT_ONLY = "the default of an unset env var only has to differ from '1'"
_DOT_PARTS = "p not in ('.', '..') is a second guard: PATH_PART_RE's first character is never '.'"
_SENTINEL = "an unknown value passed on as its sentinel string (a UUID) holds no Serve config: the search finds nothing"
_REF_NONE = (
    "_policy_of's last line runs only when view.ref returned None, which it does only for a value that "
    "is not unknown (an unknown one gives UNKNOWN or its dependency): is_unknown(arn) is False there"
)
_REF_VALUE = (
    "view.ref without the item reads the prop itself: for policyArn that is arn; for managedPolicyArns "
    "only unknown items get there, and the list resolves as they do (its one dependency, else UNKNOWN)"
)
_NO_DOC = "skipping a None or UNKNOWN document is a shortcut: statements() of either is [], so no problem either way"
_NO_STATEMENT = "a document without Statement: as_list() of the default gives [] for [] and for None alike"
_NO_DOCUMENT = (
    "skipping a None or UNKNOWN policy document is a shortcut: iam_document_problems() of either is [] "
    "(neither is JSON text nor a map)"
)
_UNREAD = (
    "the budget prices without a usage file: nothing on the way reads a resource's urn or parent "
    "(an empty Usage matches no key), so renaming either key changes no total"
)
_ON_DEMAND = (
    "the default pricing model's text (no caller leaves it out): the estimator bills any model that "
    "is not a savings plan as on-demand (infra/cost/resources.py instance_market)"
)
_CASE = "case-insensitive: HTTP field names (RFC 9110 5.1; h11 lower-cases them on the wire)"
_CAST = "typing.cast returns its value unchanged at run time; its type argument is never read"
_REPORT_URN = (
    "report(message, None) without the None: the urn of pulumi_policy's report_violation (one factory "
    "for resource and stack policies) defaults to None, as the offline runner's does"
)
_PLAN_REASON = (
    "Plan.reason is '; '.join(reasons), never empty when the plan does not fit (fits = not reasons): "
    "the operand after `or` is never read"
)
_NO_URN = "names maps URNs to names: names.get(None) is None, as the `else None` gives"
_NO_PARENT = (
    "the fallback for a parent name no resource has: [] and None are both falsy, and "
    "`cands[-1] if cands else None` gives None for either"
)
_VALUE_DEFAULT = "_config.value(..., None, ...) without the None: value()'s default is None"
EQUIVALENT: dict[str, str] = {
    "ray_cluster.serve_app.xǁBearerGateǁallows__mutmut_15": "codec names are case-insensitive: 'LATIN-1'",
    "ray_cluster.serve_app.xǁBearerGateǁ__call____mutmut_40": _CASE + ": CONTENT-TYPE",
    "ray_cluster.serve_app.xǁBearerGateǁ__call____mutmut_44": _CASE + ": WWW-AUTHENTICATE",
    "ray_cluster.serve_app.xǁBearerGateǁ__call____mutmut_49": _CASE + ": CONTENT-LENGTH",
    "ray_cluster.serve_app.x_parse_args__mutmut_22": _DEFAULT_ONLY + ": None",
    "ray_cluster.serve_app.x_parse_args__mutmut_24": _DEFAULT_ONLY + ": no default",
    "ray_cluster.serve_app.x_parse_args__mutmut_25": _DEFAULT_ONLY + ": 'XX0XX'",
    "infra.stack.config_values.x__cidrs__mutmut_4": "ip_network(c) without strict=: strict defaults to True",
    "infra.stack.config_values.x__vpc__mutmut_5": "ip_network(v) without strict=: strict defaults to True",
    "infra.stack.config_values.x__weights_uri__mutmut_26": (
        "an https URL without a path gets 'XX/XX' for '/': two safe components, accepted as '/' is"
    ),
    "infra.stack.config_values.x__weights_uri__mutmut_27": (
        "the path of a URL that does not match is never read: `not port_in_range(m)` (true for no match) decides first"
    ),
    "infra.stack.config_values.x_safe_path__mutmut_9": (
        "len(v) >= 1 differs only for '/': body '' is refused as not absolute, the same message as '/'"
    ),
    "infra.stack.config_values.x_safe_path__mutmut_10": (
        "len(v) > 2 differs only for 'a/' and '//': refused either way, with the same message"
    ),
    "infra.stack.config_values.x_safe_path__mutmut_22": (
        "body == '/' is a second guard: '/' already fails the component check (one empty component)"
    ),
    "infra.stack.config_values.x__safe_parts__mutmut_5": _DOT_PARTS,
    "infra.stack.config_values.x__safe_parts__mutmut_6": _DOT_PARTS,
    "infra.stack.config_values.x__dns_name__mutmut_16": (
        "rstrip('XX.XX') on a name that passed the check: it ends in a lower-case letter or '.', no 'X'"
    ),
    "infra.stack.config_values.x__context__mutmut_9": (
        "the bool/float test is a second guard: int(str(v)) refuses 'True', 'False' and every float's text "
        "('2.5', '4096.0', 'inf') with the same message"
    ),
    "infra.stack.config_values.x__schedule__mutmut_23": _CAST + ": None",
    "infra.stack.config_values.x__schedule__mutmut_27": _CAST + ": 'XXstr | list[str]XX'",
    "infra.stack.config_values.x__schedule__mutmut_28": _CAST + ": 'STR | LIST[STR]'",
    "infra.stack.config_rules.x_check_layout__mutmut_3": (
        "`cfg.gpu_model or True`: gpu_model is never empty (a catalog GPU id, or ConfigError): "
        "gpuInstanceType is validated as a GPU type, and check_hosts (check_owned, run before "
        "check_all) refuses a worker whose model the catalog lacks"
    ),
    "policy._props.x_tags_of__mutmut_2": "known = None instead of False: it is only read as `not known`",
    "policy._props.x_network__mutmut_2": (
        "ip_network(strict=None): ipaddress reads strict as `if strict:`, so None is False"
    ),
    "policy._stackview.xǁStackViewǁof__mutmut_18": (
        "is_unknown(None) for the id: plain() has made every sentinel UNKNOWN, not a str, so the "
        "isinstance test already leaves unknown ids out"
    ),
    "policy.resources.x__statements__mutmut_7": _NO_STATEMENT + ": None",
    "policy.resources.x__statements__mutmut_9": _NO_STATEMENT + ": no default (None)",
    "policy.resources.x__iam_least_privilege__mutmut_42": _NO_DOCUMENT + ": `None and unknown`",
    "policy.resources.x__iam_least_privilege__mutmut_44": _NO_DOCUMENT + ": is_unknown(None)",
    "policy.schedule.x__serves__mutmut_16": (
        "is_unknown(None) for the group: read through plain(), an unknown group is the UNKNOWN marker, "
        "which is falsy, so `group and` already leaves it out"
    ),
    "policy.fleet.x__as_cost_resource__mutmut_5": _UNREAD + ": 'XXurnXX'",
    "policy.fleet.x__as_cost_resource__mutmut_6": _UNREAD + ": 'URN'",
    "policy.fleet.x__as_cost_resource__mutmut_7": _UNREAD + ": 'XXparentXX'",
    "policy.fleet.x__as_cost_resource__mutmut_8": _UNREAD + ": 'PARENT'",
    "policy.fleet.x_monthly_cost_usd__mutmut_1": _ON_DEMAND + ": 'XXon-demandXX'",
    "policy.fleet.x_monthly_cost_usd__mutmut_2": _ON_DEMAND + ": 'ON-DEMAND'",
    "policy.fleet.x__s3__mutmut_69": "unknown = None instead of False: read only as `unknown or ...` and `not unknown`",
    "policy.fleet.x__budget__mutmut_60": _REPORT_URN,
    "policy.fleet.x__budget__mutmut_65": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_19": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_36": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_93": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_136": _VALUE_DEFAULT,
    "policy.fleet.x__gpu_fit__mutmut_154": _VALUE_DEFAULT,
    "policy.fleet.x__gpu_fit__mutmut_169": _VALUE_DEFAULT,
    "policy.fleet.x__placement__mutmut_97": _REPORT_URN,
    "policy.fleet.x__placement__mutmut_138": _REPORT_URN,
    "policy.fleet.x__placement__mutmut_128": (
        "is_unknown(None) for a zone: Res.props come through plain(), so an unknown zone is the UNKNOWN "
        "marker, not a str, and isinstance(az, str) already leaves it out"
    ),
    "policy.fleet.x__serving_setting__mutmut_11": _VALUE_DEFAULT,
    "policy.fleet.x__gpu_fit__mutmut_199": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_203": _REPORT_URN,
    "policy.fleet.x__gpu_fit__mutmut_204": _PLAN_REASON
    + ": `reason and join(reasons)` is join(reasons), which is reason",
    "policy.fleet.x__gpu_fit__mutmut_205": _PLAN_REASON + ": join(None)",
    "policy.fleet.x__gpu_fit__mutmut_206": _PLAN_REASON + ": 'XX; XX'.join",
    "policy.fleet.x__budget__mutmut_8": _VALUE_DEFAULT,
    "policy.runner.x__parent_urns__mutmut_36": _NO_PARENT + ": None",
    "policy.runner.x__parent_urns__mutmut_38": _NO_PARENT + ": no default (None)",
    "policy.runner.x_enforcement_of__mutmut_9": (
        "EnforcementLevel(level) of a member returns that member (Enum's lookup accepts one)"
    ),
    "policy.runner.x__invoke__mutmut_16": _NO_URN,
    "policy.runner.x__invoke__mutmut_34": _NO_URN,
    "policy.runner.x__invoke__mutmut_48": _NO_URN,
    "policy.network.x_subnet_is_public__mutmut_8": (
        "unknown = None instead of False: read only as `unknown or ...` and `if unknown`"
    ),
    "policy.network.x__ingress__mutmut_9": "allowedIngressCidrs' default None instead of []: `or []` follows",
    "policy.network.x__ingress__mutmut_13": "allowedIngressCidrs' default left out (None): `or []` follows",
    "policy.network.x__ingress__mutmut_25": "endpointPublic's default None instead of False: bool() follows",
    "policy.network.x__ingress__mutmut_29": "endpointPublic's default left out (None): bool() follows",
    "policy.network.x__ingress__mutmut_83": "str(ports[1]) where ports[0] == ports[1]",
    "policy.network.x__ingress__mutmut_121": "_is_cluster_sg(src, None): it never reads its rule argument",
    "policy.network.x__is_igw__mutmut_13": (
        "no type filter on a route's gateway dependencies: a gatewayId depends on its gateway only"
    ),
    "policy.engine.x__script__mutmut_10": _SENTINEL,
    "policy.engine.x__script__mutmut_24": _SENTINEL,
    "policy.schedule.x__window_vs_cold_start__mutmut_16": _REPORT_URN,
    "policy.host_roles.x__secrets_scoped__mutmut_5": _REPORT_URN,
    "policy.resources.x__ec2_encrypted__mutmut_60": _REPORT_URN,
    "policy.resources.x__no_public_ip__mutmut_19": _REPORT_URN,
    "policy.resources.x__no_public_ip__mutmut_29": _REPORT_URN,
    "policy.resources.x__instance_type_allowed__mutmut_24": _REPORT_URN,
    "policy.resources.x__ecr_hardened__mutmut_24": _REPORT_URN,
    "policy.resources.x__ecr_hardened__mutmut_38": _REPORT_URN,
    "policy.resources.x__ecr_hardened__mutmut_48": _REPORT_URN,
    "policy.resources.x__ecr_hardened__mutmut_67": _REPORT_URN,
    "policy.resources.x__iam_least_privilege__mutmut_13": _REPORT_URN,
    "policy.resources.x__iam_least_privilege__mutmut_49": _REPORT_URN,
    "policy.resources.x__required_tags__mutmut_50": _REPORT_URN,
    "policy.alarms.x__alarm_notifies__mutmut_26": _REPORT_URN,
    "policy.engine.x__trust_remote_code__mutmut_21": _REPORT_URN,
    "policy.engine.x__reasoning_context__mutmut_24": _REPORT_URN,
    "policy.logs.x__log_group_retention__mutmut_12": _REPORT_URN,
    "policy.logs.x__log_group_retention__mutmut_19": _REPORT_URN,
    "policy.resources.x__imdsv2__mutmut_22": _REPORT_URN,
    "policy.resources.x__template_encrypted__mutmut_42": _REPORT_URN,
    "policy.resources.x__ec2_encrypted__mutmut_29": _REPORT_URN,
    "policy.resources.x__volume_encrypted__mutmut_14": _REPORT_URN,
    "policy.schedule.x__serves__mutmut_47": _REPORT_URN,
    "policy.host_roles.x__refers__mutmut_17": (
        "the only text is_unknown() accepts is the sentinel (a UUID), which names no role: the any() is false anyway"
    ),
    "policy.host_roles.x__refers__mutmut_38": (
        "view.ref returns UNKNOWN (or a Res, returned before) for every unknown value: `ref is UNKNOWN` decides alone"
    ),
    "policy.host_roles.x_secrets_problems__mutmut_12": _NO_DOC,
    "policy.host_roles.x_secrets_problems__mutmut_14": _NO_DOC,
    "policy.host_roles.x__policy_of__mutmut_19": (
        "is_unknown(None) for a managedPolicyArns item: Res.props come through plain(), so an unknown "
        "item is the UNKNOWN marker, not a str, and isinstance(arn, str) already leaves it out"
    ),
    "policy.host_roles.x__policy_of__mutmut_25": _REF_VALUE + ": None",
    "policy.host_roles.x__policy_of__mutmut_29": _REF_VALUE + ": left out (None)",
    "policy.host_roles.x__policy_of__mutmut_32": _REF_NONE,
    "policy.host_roles.x__policy_of__mutmut_34": _REF_NONE,
    "policy.endpoint.x_tls_problems__mutmut_54": (
        "str(policy or 'XXXX'): with no sslPolicy neither '' nor 'XXXX' starts with a TLS 1.2+ prefix"
    ),
    "policy.endpoint.x__listener_lb__mutmut_7": (
        "no type filter on loadBalancerArn's dependencies: a listener's ARN depends on its load balancer only"
    ),
}

KILLED = {1, 3, 36, -24, 24, 152, 255}  # mutmut's exit codes for killed and timeout


def _module(path: Path) -> str:
    return str(path.relative_to(MUTANTS).with_suffix("").with_suffix("")).replace("/", ".")


def collect(patterns: list[str]) -> dict[str, dict[str, int | None]]:
    """module -> {mutant name: exit code} for the mutants the patterns select."""
    found: dict[str, dict[str, int | None]] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        chosen = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, p) for p in patterns)}
        if chosen:
            found[_module(meta)] = chosen
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", type=float, default=None, help="fail below this score (percent)")
    ap.add_argument("patterns", nargs="+")
    args = ap.parse_args(argv)
    found = collect(args.patterns)
    if not found:
        print("no mutmut results in mutants/ for these patterns: run `make mutation` first", file=sys.stderr)
        return 1
    rows, total = [], Counter()
    survivors: list[str] = []
    for module, codes in found.items():
        c = Counter()
        for name, code in codes.items():
            if name in EQUIVALENT:
                c["equivalent"] += 1
            elif code in KILLED:
                c["killed"] += 1
            elif code is None:
                c["not checked"] += 1
            else:
                c["survived" if code == 0 else "other"] += 1
                survivors.append(f"{name} (exit {code})")
        c["mutants"] = len(codes)
        total.update(c)
        rows.append((module, c))
    rows.append(("total", total))
    stale = sorted(
        n
        for n in EQUIVALENT
        if any(fnmatch.fnmatch(n, p) for p in args.patterns) and not any(n in c for c in found.values())
    )
    failed = bool(total["not checked"]) or bool(stale)
    print("| module | mutants | checked | killed | equivalent | survived | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, c in rows:
        # the score is over the mutants checked, the equivalent ones left out
        scored = c["mutants"] - c["not checked"] - c["equivalent"]
        score = 100.0 * c["killed"] / scored if scored else 100.0
        if args.check is not None and score < args.check:
            failed = True
        name = f"**{module}**" if module == "total" else f"`{module}`"
        left = c["survived"] + c["other"]
        checked = c["mutants"] - c["not checked"]
        print(
            f"| {name} | {c['mutants']} | {checked} | {c['killed']} | {c['equivalent']} | {left} | {score:.1f}% |"
        )
    for s in survivors:
        print(f"survived: {s}")
    for n in stale:
        print(f"listed as equivalent but not in this run: {n}")
    if total["not checked"]:
        print(f"not checked: {total['not checked']} (an interrupted run?): the check fails")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
