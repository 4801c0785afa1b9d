"""`llmfleet cost` prices one cold start: the stack's hourly total over boot -> first token."""

import json
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.stack.coldstart import estimate
from infra.stack.files import load_config
from infra.stack.resolve import resolve


@pytest.fixture(autouse=True)
def _no_real_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMFLEET_CACHE_DIR", str(tmp_path / "cache"))


def test_cost_json_and_table_price_one_cold_start():
    res = CliRunner().invoke(app, ["cost", "--stack", "prod", "--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    cfg = load_config("prod")
    plan = resolve(cfg).plan
    cat = load_catalog()
    # The stack's own worker type (g6e.48xlarge) and the plan's pipeline stages and TTFT:
    cold = estimate(
        cat.models[cfg.model], cat.instances[cfg.gpu_instance_type], plan.nodes, plan.ttft_ms / 1000
    )
    # Infracost's JSON has no field for it (its project metadata is closed): the table says it.
    usd = Decimal(doc["totalHourlyCost"]) * Decimal(str(round(cold.total_s, 1))) / 3600
    table = CliRunner().invoke(app, ["cost", "--stack", "prod"], env={"COLUMNS": "200"})
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith("One cold start"))
    assert f"~{cold.total_s:,.0f} s" in line
    shown = Decimal(line.split("): ")[1].split(" USD")[0].replace(",", ""))
    assert abs(shown - usd) < Decimal("0.02")


def test_the_checkpoint_is_one_size_with_one_unit_in_plan_cost_and_cold_start():
    # it read "642 GiB" (cold start), "642 GB" (cost) and "627.8 GiB" (plan) (issue #30)
    from infra.stack.units import fmt_gib

    ckpt = fmt_gib(load_catalog().models["deepseek-r1"].checkpoint_gib)
    assert ckpt == "642.0 GiB"
    env = {"COLUMNS": "200"}
    plan = CliRunner().invoke(app, ["plan", "--model", "deepseek-r1", "--gpu", "L40S"], env=env)
    cost = CliRunner().invoke(app, ["cost", "--stack", "prod"], env=env)
    assert plan.exit_code == 0 and cost.exit_code == 0, plan.output + cost.output
    rows = {
        ln.split("│")[1].strip(): ln.split("│")[2].strip()
        for ln in plan.stdout.splitlines()
        if ln.count("│") >= 3
    }
    assert rows["checkpoint on disk"] == ckpt and rows["weights loaded"].endswith(" GiB")
    staging = next(ln for ln in plan.stdout.splitlines() if "weight staging" in ln)
    assert f"{ckpt} / " in staging
    s3 = next(ln for ln in cost.stdout.splitlines() if "Storage (S3 Standard)" in ln)
    assert s3.split()[-4:-2] == ["642", "GiB"], s3
    assert " GB " not in s3
