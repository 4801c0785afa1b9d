"""Every JSON `llmfleet cost` emits validates against Infracost's schema (our transcription of its
published field list, tests/schemas/infracost-0.2.schema.json), with zero errors: a breakdown, a
usage file, --diff, --compare-to (our own past and an Infracost one), --from-preview of an update
with oldState, a Capacity Block stack and owned hosts. The diffs are checked for what they say."""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from infra.cli import app
from infra.cost.pricing import load_snapshot

HERE = Path(__file__).parent
SCHEMA = json.loads((HERE / "schemas" / "infracost-0.2.schema.json").read_text())
PREVIEW = HERE / "data" / "preview_update_prod.json"
RUNNER = CliRunner()
H = Decimal(730)


def validator() -> jsonschema.Draft4Validator:
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    return jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(doc)]


@pytest.fixture(autouse=True)
def _no_real_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path / "cache"))


@functools.cache
def _run(*args: str) -> tuple[int, str, str]:
    r = RUNNER.invoke(app, ["cost", *args, "--json"])
    return r.exit_code, r.stdout, r.stderr


def cost_json(*args: str) -> dict:
    code, out, err = _run(*args)
    assert code == 0, err
    return json.loads(out)


def rate(key: str) -> Decimal:
    return load_snapshot().regions["us-east-1"].rates[key].usd


def diff_rows(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in doc["projects"][0]["diff"]["resources"]}


# --- the schema itself -------------------------------------------------------------------------


def test_schema_is_strict_where_infracost_is():
    """The schema file rejects what Infracost's does (a test that could not fail proves nothing)."""
    doc = cost_json("--stack", "prod")
    assert errors(doc) == []
    broken = json.loads(json.dumps(doc))
    broken["usdPerMillionOutputTokens"] = "1"  # the old extra root key
    del broken["timeGenerated"]
    comp = broken["projects"][0]["breakdown"]["resources"][0]["costComponents"][0]
    comp["priceSource"] = "x"  # provenance belongs in metadata
    del comp["priceNotFound"]
    broken["projects"][0]["pastBreakdown"] = None
    del broken["metadata"]["vcsCommitSha"]
    del broken["projects"][0]["diff"]["resources"][0]["metadata"]
    broken["timeGenerated"] = "yesterday"
    found = "\n".join(errors(broken))
    for expected in (
        "'usdPerMillionOutputTokens' was unexpected",
        "'priceSource' was unexpected",
        "'priceNotFound' is a required property",
        "None is not of type 'object'",
        "'vcsCommitSha' is a required property",
        "'metadata' is a required property",
        "'yesterday' is not a 'date-time'",
    ):
        assert expected in found, expected


# --- every mode validates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--stack", "prod"),
        ("--stack", "prod", "-c", "llmfleet:spot=true"),
        ("--stack", "prod", "-c", "llmfleet:pricingModel=savings-plan-3y"),
        ("--stack", "prod", "-c", "llmfleet:schedule=mon-fri 08:00-20:00 Europe/Berlin"),
        ("--stack", "dev"),
        ("--stack", "onprem-l20"),
        ("--stack", "block-h100"),
        ("--stack", "prod", "--diff", "dev"),
        ("--stack", "prod", "--from-preview", str(PREVIEW)),
    ],
)
def test_cost_json_validates(args):
    doc = cost_json(*args)
    assert errors(doc) == []
    assert doc["projects"][0]["metadata"]["type"] in ("pulumi_program", "pulumi_preview_json")


def test_usage_file_output_validates(tmp_path):
    usage = tmp_path / "usage.yml"
    usage.write_text(
        "resource_usage:\n  endpoint-nlb: {processed_bytes_gb: 500}\n"
        "  weights-bucket: {standard: {monthly_tier_2_requests: 90000}}\n"
    )
    doc = cost_json("--stack", "prod", "--usage-file", str(usage))
    assert errors(doc) == []
    assert Decimal(doc["totalMonthlyUsageCost"]) > 0
    assert doc["metadata"]["usageFilePath"] == str(usage)


def test_compare_to_an_earlier_cost_json(tmp_path):
    past_file = tmp_path / "past.json"
    past = cost_json("--stack", "prod", "-c", "llmfleet:spot=true")
    past_file.write_text(json.dumps(past))
    doc = cost_json("--stack", "prod", "--compare-to", str(past_file))
    assert errors(doc) == []
    assert doc["metadata"]["infracostCommand"] == "diff"
    proj = doc["projects"][0]
    assert proj["pastBreakdown"] == past["projects"][0]["breakdown"]
    rows = diff_rows(doc)
    # only the workers changed (matched by URN), each by on-demand minus spot hours
    assert set(rows) == {"cluster-worker-0", "cluster-worker-1", "cluster-worker-2"}
    fraction = Decimal(load_snapshot().assumptions["spot_fraction_of_on_demand"].value)
    for r in rows.values():
        assert Decimal(r["monthlyCost"]) == Decimal("30.131") * H * (1 - fraction)
        assert r["metadata"]["urn"].endswith(f"::{r['name']}")
        names = {c["name"]: Decimal(c["monthlyCost"]) for c in r["costComponents"]}
        assert names == {
            "Instance usage (Linux/UNIX, spot, g6e.48xlarge)": -Decimal("30.131") * fraction * H,
            "Instance usage (Linux/UNIX, on-demand, g6e.48xlarge)": Decimal("30.131") * H,
        }
    assert Decimal(doc["diffTotalMonthlyCost"]) == Decimal(doc["totalMonthlyCost"]) - Decimal(
        past["totalMonthlyCost"]
    )
    table = RUNNER.invoke(app, ["cost", "--stack", "prod", "--compare-to", str(past_file)])
    total_diff = f"+{Decimal(doc['diffTotalMonthlyCost']):,.2f}"  # the table shows the JSON's numbers
    assert table.exit_code == 0 and "cluster-worker-2" in table.stdout and total_diff in table.stdout


INFRACOST_PAST = {  # the shape `infracost breakdown --format json` writes (a Terraform project)
    "version": "0.2",
    "metadata": {
        "infracostCommand": "breakdown",
        "vcsBranch": "main",
        "vcsCommitSha": "4822f3af904200b26ff0a3399750c76d20007f6b",
        "vcsCommitAuthorName": "A. Author",
        "vcsCommitAuthorEmail": "a@example.com",
        "vcsCommitTimestamp": "2026-08-17T06:58:57Z",
        "vcsCommitMessage": "add a NAT gateway",
    },
    "currency": "USD",
    "projects": [
        {
            "name": "example/terraform",
            "displayName": "terraform",
            "metadata": {"path": ".", "type": "terraform_dir"},
            "pastBreakdown": {
                "resources": [],
                "totalHourlyCost": "0",
                "totalMonthlyCost": "0",
                "totalMonthlyUsageCost": "0",
            },
            "breakdown": {
                "resources": [
                    {
                        "name": "aws_nat_gateway.main",
                        "resourceType": "aws_nat_gateway",
                        "metadata": {"calls": [{"blockName": "aws_nat_gateway.main", "filename": "main.tf"}]},
                        "hourlyCost": "0.045",
                        "monthlyCost": "32.85",
                        "costComponents": [
                            {
                                "name": "NAT gateway",
                                "unit": "hours",
                                "hourlyQuantity": "1",
                                "monthlyQuantity": "730",
                                "price": "0.045",
                                "hourlyCost": "0.045",
                                "monthlyCost": "32.85",
                                "priceNotFound": False,
                            }
                        ],
                    }
                ],
                "totalHourlyCost": "0.045",
                "totalMonthlyCost": "32.85",
                "totalMonthlyUsageCost": "0",
            },
            "diff": {
                "resources": [],
                "totalHourlyCost": "0.045",
                "totalMonthlyCost": "32.85",
                "totalMonthlyUsageCost": "0",
            },
            "summary": {"totalDetectedResources": 1, "totalSupportedResources": 1},
        }
    ],
    "totalHourlyCost": "0.045",
    "totalMonthlyCost": "32.85",
    "pastTotalHourlyCost": "0",
    "pastTotalMonthlyCost": "0",
    "diffTotalHourlyCost": "0.045",
    "diffTotalMonthlyCost": "32.85",
    "timeGenerated": "2026-08-17T18:39:55.964808023Z",
    "summary": {"totalDetectedResources": 1},
}


def test_compare_to_an_infracost_file(tmp_path):
    assert errors(INFRACOST_PAST) == []  # the input is Infracost-valid too
    path = tmp_path / "infracost.json"
    path.write_text(json.dumps(INFRACOST_PAST))
    doc = cost_json("--stack", "prod", "--compare-to", str(path))
    assert errors(doc) == []
    rows = diff_rows(doc)
    # its one project is taken; nothing pairs with a Terraform address, so it shows as removed
    assert Decimal(rows["aws_nat_gateway.main"]["monthlyCost"]) == Decimal("-32.85")
    assert Decimal(doc["pastTotalMonthlyCost"]) == Decimal("32.85")


def test_compare_to_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in (
        ("{nope", "not JSON"),
        ('{"projects": []}', "non-empty `projects` list"),
        ('{"projects": [{"name": "a"}, {"name": "b"}]}', "no project named 'prod'; it has: a, b"),
        (
            '{"projects": [{"name": "prod", "breakdown": {"resources": [{"name": "x", "costComponents": [{"price": "cheap"}]}]}}]}',
            "'cheap' is not a decimal string",
        ),
    ):
        bad.write_text(text)
        r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--compare-to", str(bad)])
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = RUNNER.invoke(app, ["cost", "--stack", "prod", "--compare-to", str(bad), "--diff", "dev"])
    assert r.exit_code == 2 and "allowed: one of them" in r.stderr


# --- a real-shape preview of an update ---------------------------------------------------------


def test_preview_of_an_update_diffs_old_state_to_new_state():
    """The fixture is prod going from spot workers + a NAT gateway to on-demand workers with
    300 GB roots (tests/data/make_preview_update.py). Past = oldState, new = newState."""
    doc = cost_json("--stack", "prod", "--from-preview", str(PREVIEW))
    assert errors(doc) == []
    assert doc["metadata"]["infracostCommand"] == "diff"
    assert doc["projects"][0]["metadata"] == {"path": str(PREVIEW), "type": "pulumi_preview_json"}
    # the two sides price exactly as the two configurations do when captured
    before = cost_json("--stack", "prod", "-c", "llmfleet:spot=true", "-c", "llmfleet:natGateway=true")
    after = cost_json("--stack", "prod", "-c", "llmfleet:rootVolumeGb=300")
    assert doc["pastTotalMonthlyCost"] == before["totalMonthlyCost"]
    assert doc["totalMonthlyCost"] == after["totalMonthlyCost"]
    rows = diff_rows(doc)
    assert set(rows) == {
        "cluster-head",
        "cluster-worker-0",
        "cluster-worker-1",
        "cluster-worker-2",
        "net-nat",
        "net-nat-eip",
    }
    fraction = Decimal(load_snapshot().assumptions["spot_fraction_of_on_demand"].value)
    gp3 = rate("ebs.gp3.storage")
    for w in ("cluster-worker-0", "cluster-worker-1", "cluster-worker-2"):
        assert Decimal(rows[w]["monthlyCost"]) == Decimal("30.131") * H * (1 - fraction) + 100 * gp3
        (root,) = rows[w]["subresources"]
        assert root["costComponents"][0]["monthlyQuantity"] == "100"  # 200 -> 300 GB
    assert Decimal(rows["cluster-head"]["monthlyCost"]) == 100 * gp3
    assert rows["cluster-head"]["costComponents"] == []  # its hours did not change
    assert Decimal(rows["net-nat"]["monthlyCost"]) == -rate("nat.hour") * H
    assert Decimal(rows["net-nat-eip"]["monthlyCost"]) == -rate("ipv4.hour") * H
    assert Decimal(doc["diffTotalMonthlyCost"]) == Decimal(doc["totalMonthlyCost"]) - Decimal(
        doc["pastTotalMonthlyCost"]
    )


def test_preview_without_sames_keeps_the_diff_and_says_the_totals_are_partial(tmp_path):
    full = json.loads(PREVIEW.read_text())
    # what `pulumi preview --json` writes without --show-sames: changed steps and the root stack's
    stack_type = "pulumi:pulumi:Stack"
    kept = [s for s in full["steps"] if s["op"] != "same" or s["newState"]["type"] == stack_type]
    assert kept[0]["op"] == "same" and len(kept) < len(full["steps"])
    changed = {**full, "steps": kept}
    path = tmp_path / "preview.json"
    path.write_text(json.dumps(changed))
    code, out, err = _run("--stack", "prod", "--from-preview", str(path))
    assert code == 0, err
    doc = json.loads(out)
    assert errors(doc) == []
    assert "--show-sames" in err
    warnings = doc["projects"][0]["metadata"]["warnings"]
    assert any("--show-sames" in w["message"] and w["isError"] is False for w in warnings)
    assert (
        doc["diffTotalMonthlyCost"]
        == cost_json("--stack", "prod", "--from-preview", str(PREVIEW))["diffTotalMonthlyCost"]
    )
    assert Decimal(doc["totalMonthlyCost"]) < Decimal(
        cost_json("--stack", "prod", "--from-preview", str(PREVIEW))["totalMonthlyCost"]
    )


def test_preview_that_only_creates_has_an_empty_past():
    doc = json.loads(PREVIEW.read_text())
    creates = {
        **doc,
        "steps": [
            {"op": "create", "urn": s["urn"], "newState": s["newState"]}
            for s in doc["steps"]
            if s.get("newState")
        ],
    }
    from infra.cost import preview as cost_preview

    states = cost_preview.states_from_preview(creates)
    assert states.past == [] and len(states.new) > 50


def test_preview_applies_the_usage_file_to_both_states(tmp_path):
    usage = tmp_path / "usage.yml"
    usage.write_text(
        "resource_usage:\n  endpoint-nlb: {processed_bytes_gb: 5000}\n  net-nat: {monthly_data_processed_gb: 100}\n"
    )
    plain = cost_json("--stack", "prod", "--from-preview", str(PREVIEW))
    doc = cost_json("--stack", "prod", "--from-preview", str(PREVIEW), "--usage-file", str(usage))
    assert errors(doc) == []
    # the NLB is unchanged by the update, so its usage moves both totals and not the diff
    lcu = Decimal(5000) * rate("nlb.lcu")
    assert Decimal(doc["totalMonthlyCost"]) - Decimal(plain["totalMonthlyCost"]) == lcu
    assert "endpoint-nlb" not in diff_rows(doc)
    # the deleted NAT gateway's data goes away with it
    nat = diff_rows(doc)["net-nat"]
    assert Decimal(nat["monthlyCost"]) == -(rate("nat.hour") * H + 100 * rate("nat.data"))
