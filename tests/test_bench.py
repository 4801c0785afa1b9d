"""`llmfleet bench` / `batch` without a cluster: statistics, prompts, the planner beside a sweep, the
calibration file that `llmfleet plan` reads, the plot, tune's Serve configs and the job command.
The real runs (sweep, tune, batch on the local cluster) are in tests/test_local.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.bench import batch, calibration, sweep, tune
from infra.bench.sweep import BenchError, RequestResult
from infra.stack.planner import plan

_BIN = Path(sys.executable).parent / "llmfleet"
LLMFLEET = [str(_BIN)] if _BIN.exists() else [sys.executable, "-c", "from infra.cli import main; main()"]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMFLEET, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_percentile_is_numpys_linear_interpolation():
    np = pytest.importorskip("numpy")
    data = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 95, 100):
        assert sweep.percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    assert sweep.percentile([], 50) is None


def test_summarize_counts_errors_and_computes_rates():
    ok = [RequestResult(True, ttft_s=0.1 * i, latency_s=0.1 * i + 0.9, output_tokens=10, prompt_tokens=64)
          for i in range(1, 5)]  # fmt: skip
    bad = [
        RequestResult(False, "http_503"),
        RequestResult(False, "step_timeout"),
        RequestResult(False, "http_503"),
    ]
    s = sweep.summarize(4, ok + bad, wall_s=2.0, timed_out=True)
    assert (s.requests, s.succeeded, s.errors) == (7, 4, {"http_503": 2, "step_timeout": 1})
    assert s.requests_per_s == 2.0 and s.output_tokens == 40 and s.output_tokens_per_s == 20.0
    assert s.tpot_ms_p50 == pytest.approx(100.0)  # (0.9 s) / 9 tokens after the first
    assert s.ttft_ms_p50 == pytest.approx(250.0) and s.prompt_tokens_mean == 64 and s.timed_out


def test_synthetic_prompts_have_exact_length_and_no_special_tokens():
    transformers = pytest.importorskip("transformers")
    from infra.local.tiny_model import ensure_tiny_model

    tok = transformers.AutoTokenizer.from_pretrained(str(ensure_tiny_model()))
    vocab = sweep.prompt_vocabulary(tok)
    assert not set(vocab) & set(tok.all_special_ids)
    prompts = sweep.synthetic_prompts(vocab, 5, 77, seed=1)
    assert [len(p) for p in prompts] == [77] * 5 and len({tuple(p) for p in prompts}) == 5
    assert prompts == sweep.synthetic_prompts(vocab, 5, 77, seed=1)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (sweep.SweepSpec((0,), 8, 8), "--concurrency: 0 is not allowed"),
        (sweep.SweepSpec((1,), 0, 8), "--input-len: 0 is not allowed"),
        (sweep.SweepSpec((1,), 8, 8, requests_per_step=0), "--requests: 0"),
        (sweep.SweepSpec((1,), 8, 8, step_timeout_s=0), "--step-timeout: 0"),
    ],
)
def test_sweep_spec_rejects_bad_input_in_one_line(spec, needle):
    with pytest.raises(BenchError, match=needle):
        spec.check()
    with pytest.raises(BenchError, match="--concurrency: '1,x'"):
        sweep.parse_concurrencies("1,x")


def test_default_requests_per_step_and_duration_mode():
    s = sweep.SweepSpec((1, 8), 8, 8)
    assert (s.requests_for(1), s.requests_for(8)) == (8, 32)
    assert sweep.SweepSpec((1,), 8, 8, duration_s=5).requests_for(1) is None


def _layout(replicas: int = 1) -> calibration.PlanLayout:
    return calibration.PlanLayout(
        "deepseek-r1", "L20", "fp8", 8, 3, replicas, 8192, 0.9, "vllm", "onprem-l20"
    )


def test_prediction_is_the_planners_at_the_steps_concurrency_split_over_replicas():
    p = plan("deepseek-r1", "L20", gpus_per_node=8, nodes=3, concurrency=4, input_len=128, output_len=32)
    one = calibration.predict(_layout(), 4, 128, 32)
    assert one["output_tokens_per_s"] == pytest.approx(p.decode_tokens_per_s_expected)
    assert one["tpot_ms"] == p.tpot_ms and one["fits"]
    # `plan` and `bench --plan-stack` agree on TTFT, the serving path's measured cost included
    assert one["ttft_ms"] == p.ttft_ms and p.ttft_serving_path_ms > 0
    p2 = plan("deepseek-r1", "L20", gpus_per_node=8, nodes=3, concurrency=2, input_len=128, output_len=32)
    two = calibration.predict(_layout(replicas=2), 4, 128, 32)
    assert two["output_tokens_per_s"] == pytest.approx(2 * p2.decode_tokens_per_s_expected)
    assert two["tpot_ms"] == p2.tpot_ms


def test_layout_for_stack_reads_the_stacks_plan():
    lay = calibration.layout_for_stack("onprem-l20")
    assert (lay.model, lay.gpu, lay.tensor_parallel_size, lay.pipeline_parallel_size) == (
        "deepseek-r1",
        "L20",
        8,
        3,
    )
    with pytest.raises(BenchError):
        calibration.layout_for_stack("no-such-stack")


def _steps(measured_factor: float) -> list[sweep.StepStats]:
    lay = _layout()
    steps = []
    for c in (1, 4):
        pred = calibration.predict(lay, c, 128, 32)
        s = sweep.summarize(c, [RequestResult(True, ttft_s=0.1, latency_s=1.0, output_tokens=32)], 1.0, False)
        s.output_tokens_per_s = pred["output_tokens_per_s"] * measured_factor
        s.tpot_ms_p50 = pred["tpot_ms"] / measured_factor
        s.predicted = pred
        steps.append(s)
    return steps


def test_calibration_file_round_trip_and_plan_reads_it(tmp_path):
    f = tmp_path / "cal.json"
    entry = calibration.entry_from_sweep(_layout(), _steps(0.5), "stack:onprem-l20", 128, 32)
    calibration.append_entry(entry, f)
    calibration.append_entry(calibration.entry_from_sweep(_layout(), _steps(2.0), "x", 128, 32), f)
    doc = json.loads(f.read_text())
    assert doc["version"] == 1 and len(doc["entries"]) == 2 and len(doc["entries"][0]["points"]) == 2
    tok, tpot, n = calibration.ratios_for(doc, _layout().key())
    assert (tok, tpot, n) == (pytest.approx(1.0), pytest.approx(1.0), 4)  # 0.5x and 2x: geometric mean 1
    f.unlink()
    calibration.append_entry(entry, f)
    p = plan("deepseek-r1", "L20", gpus_per_node=8, nodes=3)
    c = calibration.calibrate_plan(p, f).calibration
    assert c["tokens_per_s_ratio"] == pytest.approx(0.5, rel=1e-3) and c["points"] == 2
    assert c["decode_tokens_per_s_expected"] == pytest.approx(p.decode_tokens_per_s_expected * 0.5, rel=1e-3)
    assert c["tpot_ms"] == pytest.approx(p.tpot_ms * 2, rel=1e-3)
    # another layout is untouched
    assert calibration.calibrate_plan(plan("deepseek-r1", "H200", nodes=1), f).calibration is None
    r = run_cli(
        "plan", "--model", "deepseek-r1", "--gpu", "L20", "--json", env={calibration.CALIBRATION_ENV: str(f)}
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["calibration"]["points"] == 2 and out["calibration"]["source"] == str(f)
    assert out["decode_tokens_per_s_expected"] == p.decode_tokens_per_s_expected  # the fit stays as it is
    f.write_text("{not json")
    r = run_cli("plan", "--model", "deepseek-r1", "--gpu", "L20", env={calibration.CALIBRATION_ENV: str(f)})
    assert r.returncode == 2 and "calibration file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plot_writes_a_png_of_both_series(tmp_path):
    pytest.importorskip("matplotlib")
    from infra.bench.plot import write_plot

    steps = _steps(0.5)
    out = tmp_path / "p.png"
    series = write_plot(steps, out, "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        [p["concurrency"] for p in series["measured"]]
        == [1, 4]
        == [p["concurrency"] for p in series["predicted"]]
    )
    assert series["predicted"][1]["output_tokens_per_s"] == steps[1].predicted["output_tokens_per_s"]


SERVE_DOC = {
    "proxy_location": "HeadOnly",
    "http_options": {"host": "10.0.0.10", "port": 8000, "request_timeout_s": None},
    "applications": {
        "llm": {
            "status": "RUNNING",
            "deployed_app_config": {
                "name": "llm",
                "route_prefix": "/",
                "import_path": "ray_cluster.serve_app:build_app",
                "args": {"llm_configs": [{"engine_kwargs": {"max_model_len": 1024}}], "api_token_env": "T"},
            },
            "deployments": {
                "LLMServer:m": {"status": "HEALTHY"},
                "BearerOpenAiIngress": {"status": "HEALTHY"},
            },
        }
    },
}


def test_tune_puts_deployment_options_in_overrides_and_engine_args_in_the_llm_config():
    base = tune.deployed_config(SERVE_DOC)
    assert base["http_options"] == {"host": "10.0.0.10", "port": 8000, "request_timeout_s": None}
    app, llm, ingress = tune.deployment_names(SERVE_DOC)
    assert (app, llm, ingress) == ("llm", "LLMServer:m", "BearerOpenAiIngress")
    cfg = tune.trial_config(
        base, app, llm, ingress, {"max_ongoing_requests": 4, "ingress_max_ongoing_requests": 16}
    )
    a = cfg["applications"][0]
    # in place: the app's args (its code version) are unchanged
    assert a["args"] == base["applications"][0]["args"]
    assert sorted(a["deployments"], key=lambda d: d["name"]) == [
        {"name": "BearerOpenAiIngress", "max_ongoing_requests": 16},
        {"name": "LLMServer:m", "max_ongoing_requests": 4},
    ]
    cfg = tune.trial_config(base, app, llm, ingress, {"max_num_seqs": 8, "max_num_batched_tokens": 512})
    assert cfg["applications"][0]["args"]["llm_configs"][0]["engine_kwargs"] == {
        "max_model_len": 1024, "max_num_seqs": 8, "max_num_batched_tokens": 512}  # fmt: skip
    assert "max_num_seqs" not in json.dumps(base)  # the base stays as it was


def test_tune_grid_and_objective():
    assert tune.parse_grid(["max_ongoing_requests=1,8"]) == {"max_ongoing_requests": [1, 8]}
    assert tune.parse_grid([]) == tune.DEFAULT_GRID
    for bad in ("max_num_seqs", "gpu=1", "max_num_seqs=a", "max_num_seqs=0"):
        with pytest.raises(BenchError, match="--grid"):
            tune.parse_grid([bad])
    steps = [
        {"concurrency": 1, "errors": {}, "tpot_ms_p95": 50, "output_tokens_per_s": 10},
        {"concurrency": 4, "errors": {}, "tpot_ms_p95": 90, "output_tokens_per_s": 30},
        {"concurrency": 8, "errors": {}, "tpot_ms_p95": 300, "output_tokens_per_s": 60},
        {"concurrency": 16, "errors": {"http_503": 1}, "tpot_ms_p95": 80, "output_tokens_per_s": 90},
    ]
    assert tune.objective(steps, 100) == (30, 4)
    assert tune.objective(steps, 10) == (0.0, None)
    assert tune.TuneSpec({"max_num_seqs": [1]}).restarts_engines()
    assert not tune.TuneSpec({"max_ongoing_requests": [1]}).restarts_engines()


def test_batch_dry_run_prints_the_command_and_does_not_say_running(tmp_path):
    # README's `batch --stack prod ... --dry-run`: the command on stdout, ready to run (its
    # working dir kept for it); stderr said "running: <command>" although nothing ran
    from typer.testing import CliRunner

    from infra.cli import app

    src = tmp_path / "prompts.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n{"id": 2, "prompt": "yo", "max_tokens": 8}\n')
    args = [
        "batch",
        "--stack",
        "prod",
        "--input",
        str(src),
        "--output",
        "s3://my-bucket/results/",
        "--dry-run",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "running" not in r.stderr and r.stdout.startswith("ray job submit "), (r.stdout, r.stderr)
    work = r.stdout.split("--working-dir ", 1)[1].split()[0]
    assert sorted(os.listdir(work)) == ["batch_job.py", "prompts.jsonl"]
    shutil.rmtree(work)


def test_batch_job_submit_command_for_a_stack(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text('{"id": 1, "prompt": "hi"}\n')
    argv, work = batch.prepare_submit(
        "onprem-l20", None, "http://127.0.0.1:8265", str(src), "s3://b/out/", 16, 8
    )
    assert argv[:8] == [
        "ray",
        "job",
        "submit",
        "--address",
        "http://127.0.0.1:8265",
        "--working-dir",
        work,
        "--",
    ]
    assert sorted(os.listdir(work)) == ["batch_job.py", "prompts.jsonl"]
    shutil.rmtree(work)
    job = argv[argv.index("--") + 1 :]
    assert job[:2] == ["python", "batch_job.py"]
    args = dict(zip(job[2::2], job[3::2], strict=True))
    assert args["--input"] == "prompts.jsonl" and args["--output"] == "s3://b/out/"
    engine = json.loads(args["--engine-kwargs"])
    assert (engine["tensor_parallel_size"], engine["pipeline_parallel_size"]) == (8, 3)
    bundles = json.loads(args["--bundles"])
    assert len(bundles) == 24 and all(b["GPU"] == 1 for b in bundles)
    # the job file parses what the operator side sends
    from infra.bench import batch_job

    with pytest.raises(SystemExit):  # argparse accepts it, then needs Ray
        batch_job.main([*job[2:], "--help"])
    with pytest.raises(BenchError, match="--output: 'out' is not allowed with --stack"):
        batch.prepare_submit("onprem-l20", None, "http://x", str(src), "out", 16, 8)


def test_cli_targets_are_one_line_errors(tmp_path):
    env = {"LLMFLEET_STATE_DIR": str(tmp_path)}
    r = run_cli("bench", env=env)
    assert r.returncode == 2 and "target: missing" in r.stderr
    r = run_cli("bench", "--local", "--name", "nothing", env=env)
    assert r.returncode == 1 and "no local cluster 'nothing'" in r.stderr
    r = run_cli("bench", "--local", "--concurrency", "0", env=env)
    assert r.returncode == 1 and "--concurrency: 0 is not allowed" in r.stderr
    r = run_cli("batch", "--input", "x.csv", "--output", "o", "--local", "--name", "nothing", env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("batch", "--input", "x.jsonl", "--output", "o", env=env)
    assert r.returncode == 2 and "target: missing" in r.stderr


def test_stack_target_reads_endpoint_from_outputs_and_token_from_ssm(tmp_path, monkeypatch):
    from infra.bench import targets
    from tests.moto_fixtures import DUMMY_CREDS, MotoServer

    with MotoServer() as moto:
        moto.client("ssm").put_parameter(Name="/llmfleet/prod/token", Value="s3cret", Type="SecureString")
        for k, v in {**DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url}.items():
            monkeypatch.setenv(k, v)
        outputs = tmp_path / "outputs.json"
        outputs.write_text(json.dumps({"endpoint_url": "http://internal-nlb:8000", "served_model": "deepseek-ai/DeepSeek-R1",
                                       "token_parameter": "/llmfleet/prod/token", "region": "us-east-1"}))  # fmt: skip
        r = targets.stack_target("prod", outputs, None, None, "/tok")
        assert r.target == sweep.Target(
            "http://internal-nlb:8000/v1", "s3cret", "deepseek-ai/DeepSeek-R1", "stack:prod"
        )
        # a tunnel instead of the internal NLB; the token still from SSM
        r = targets.stack_target("prod", outputs, "http://127.0.0.1:18000/v1", None, "/tok")
        assert r.target.endpoint == "http://127.0.0.1:18000/v1" and r.target.token == "s3cret"
        with pytest.raises(BenchError, match="SSM parameter '/nope'"):
            outputs.write_text(
                json.dumps({"endpoint_url": "http://x", "served_model": "m", "token_parameter": "/nope"})
            )
            targets.stack_target("prod", outputs, None, None, None)


def test_batch_results_have_one_schema_and_resume_skips_done_ids_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from infra.bench import batch_job

    ok = batch_job.result_row({"id": 1, "prompt": "p", "generated_text": "t", "num_generated_tokens": 3, "generated_tokens": [5, 6, 7],
                               "num_input_tokens": 2, "__inference_error__": "", "extra": 0})  # fmt: skip
    failed = batch_job.result_row(
        {"id": 2, "prompt": "p", "__inference_error__": "ValueError: x", "params": ""}
    )
    assert ok.keys() == failed.keys() and failed["error"] == "ValueError: x" and not ok["error"]
    out = tmp_path / "results.parquet"
    out.mkdir()
    pq.write_table(pa.Table.from_pylist([ok, failed]), out / "a.parquet")
    assert batch_job.done_ids(str(out)) == {1}  # the failed row runs again
    assert batch_job.done_ids(str(tmp_path / "nothing")) == set() == batch_job.done_ids("s3://b/x/")


def test_tune_best_out_is_a_stack_config_fragment_that_c_and_a_stack_file_take(tmp_path, monkeypatch):
    import shutil
    from types import SimpleNamespace

    import yaml

    from infra.commands import bench as bench_cmd
    from infra.constants import REPO_ROOT
    from infra.rayconf.serving import serve_config_yaml
    from infra.stack.files import load_config
    from infra.stack.resolve import resolve

    best_cfg = {"max_ongoing_requests": 16, "ingress_max_ongoing_requests": 64, "max_num_seqs": 32,
                "max_num_batched_tokens": 4096}  # fmt: skip
    result = {"app": "llm", "deployments": {"llm": "LLMServer:m", "ingress": "BearerOpenAiIngress"},
              "tpot_budget_ms": 200.0, "search": "grid", "grid": {k: [v] for k, v in best_cfg.items()},
              "trials": [{"config": best_cfg, "objective": 812.5, "best_concurrency": 16, "apply_seconds": 3.0,
                          "engines_restarted": True, "steps": []}],
              "best": {"config": best_cfg, "objective": 812.5, "best_concurrency": 16, "serve_config": {}},
              "restored": True}  # fmt: skip
    monkeypatch.setattr(tune, "run_tune", lambda *a, **k: result)
    out = tmp_path / "best.yaml"
    resolved = SimpleNamespace(target=None, dashboard="http://127.0.0.1:8265")
    bench_cmd._tune(resolved, None, None, [], "grid", 4, 200.0, [], out, as_json=True)

    text = out.read_text()
    frag = yaml.safe_load(text)
    assert frag == {"config": {
        "llmfleet:serveOptions": {"max_ongoing_requests": 16, "ingress": {"max_ongoing_requests": 64}},
        "llmfleet:engineArgs": {"max_num_seqs": 32, "max_num_batched_tokens": 4096}}}  # fmt: skip
    assert text.startswith(
        "# llmfleet bench --tune: 812.5 output tok/s at TPOT p95 <= 200 ms (concurrency 16)"
    )

    # -c takes each key as the comment shows it ...
    cs = [line.split("-c '", 1)[1].rstrip("'") for line in text.splitlines() if "-c '" in line]
    assert [c.split("=", 1)[0] for c in cs] == ["llmfleet:serveOptions", "llmfleet:engineArgs"]
    stack = resolve(load_config("prod", cs))
    doc = yaml.safe_load(serve_config_yaml(stack.cfg, stack.plan))
    a = doc["applications"][0]["args"]
    assert a["llm_configs"][0]["engine_kwargs"]["max_num_seqs"] == 32
    assert a["llm_configs"][0]["engine_kwargs"]["max_num_batched_tokens"] == 4096
    assert a["llm_configs"][0]["deployment_config"]["max_ongoing_requests"] == 16
    assert a["ingress_deployment_config"]["max_ongoing_requests"] == 64

    # ... and a stack file takes its `config:` entries as they are
    (tmp_path / "p" / "stacks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "p" / "Pulumi.yaml")
    prod = yaml.safe_load((REPO_ROOT / "stacks" / "Pulumi.prod.yaml").read_text())
    prod["config"].update(frag["config"])
    (tmp_path / "p" / "stacks" / "Pulumi.prod.yaml").write_text(yaml.safe_dump(prod))
    merged = load_config("prod", project_dir=tmp_path / "p")
    assert (merged.engine_args, merged.serve_options) == (stack.cfg.engine_args, stack.cfg.serve_options)


def test_stack_fragment_maps_each_tuned_option_to_its_key():
    assert tune.stack_fragment({"max_queued_requests": -1}) == {
        "config": {"llmfleet:serveOptions": {"max_queued_requests": -1}}
    }
    assert tune.stack_fragment({"max_num_seqs": 8}) == {
        "config": {"llmfleet:engineArgs": {"max_num_seqs": 8}}
    }
    with pytest.raises(BenchError, match="gpu: not a tuned option"):
        tune.stack_fragment({"gpu": 1})


def test_batch_rows_with_and_without_max_tokens(tmp_path):
    # Ray Data hands a row that lacks a column other rows have as NaN (pandas) or None (arrow):
    # int(NaN) crashed the whole job with "cannot convert float NaN to integer" (issue #30)
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from infra.bench import batch_job

    records = [{"id": 1, "prompt": "a", "max_tokens": 5}, {"id": 2, "prompt": "b"}]
    pandas_rows = pd.DataFrame.from_records(records).to_dict("records")
    arrow_rows = pa.Table.from_pylist(records).to_pylist()
    assert isinstance(pandas_rows[1]["max_tokens"], float) and arrow_rows[1]["max_tokens"] is None
    pre = batch_job.preprocess(32)
    for rows in (pandas_rows, arrow_rows):
        assert [pre(r)["sampling_params"]["max_tokens"] for r in rows] == [5, 32]
    assert pre({"id": 3, "prompt": "c", "max_tokens": np.int64(7)})["sampling_params"]["max_tokens"] == 7
    for bad in (0, 2.5, "ten", True):
        with pytest.raises(
            ValueError, match=rf"^row id=4: max_tokens = {bad!r}: allowed: a whole number >= 1"
        ):
            batch_job.row_max_tokens({"id": 4, "max_tokens": bad}, 32)
    with pytest.raises(SystemExit, match=r"^error: --input: row id=9: max_tokens = -1: allowed"):
        batch_job.check_max_tokens([*pandas_rows, {"id": 9, "max_tokens": -1}], 32)


def test_batch_rate_counts_from_the_first_request_not_the_engine_start():
    from infra.bench import batch_job

    # rows out at t=100..104 s (epoch), each 2 s in the engine; the job started at t=40 (model load)
    rows = [
        batch_job.result_row({"id": i, "finished_at": 100.0 + i, "time_taken_llm": 2.0}) for i in range(5)
    ]
    again = [batch_job.result_row(r) for r in rows]  # the second pass keeps the first's stamps
    assert [r["finished_at"] for r in again] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert (
        batch_job.generation_seconds([r["finished_at"] for r in again], [r["engine_seconds"] for r in again])
        == 6.0
    )
    failed = batch_job.result_row({"id": 9, "__inference_error__": "x", "time_taken_llm": -1})
    assert failed["engine_seconds"] == 0.0
    assert batch_job.generation_seconds([], []) == 0.0


def test_batch_waits_for_the_engine_processes_before_ray_shutdown():

    # a process titled as vLLM titles its workers, under this process as the local Ray's are
    proc = subprocess.Popen(["bash", "-c", 'exec -a "VLLM::Worker" sleep 30'])
    try:
        deadline = time.monotonic() + 10
        while not batch.engine_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batch.engine_processes() == ["VLLM::Worker 30"]
        # still there at the timeout: False (the caller shuts Ray down anyway)
        t = iter(range(100))
        assert (
            batch.wait_actors_gone(lambda: len(batch.engine_processes()), 3, lambda: next(t), lambda s: None)
            is False
        )
    finally:
        proc.kill()
        proc.wait()
    assert batch.engine_processes() == []
    polls = iter([2, 1, 0])
    assert batch.wait_actors_gone(lambda: next(polls), 60, time.monotonic, lambda s: None) is True


def _tracker_keyerror(name: str = "/psm_10b3d52e", rtype: str = "shared_memory") -> list[str]:
    """The traceback CPython's resource tracker itself prints when asked to unregister a
    shared-memory segment or a semaphore it does not hold (what the batch's engine processes
    trigger on exit: both kinds were seen on the local cluster)."""
    code = (
        "from multiprocessing import resource_tracker as rt\n"
        f"rt.unregister({name!r}, {rtype!r})\n"
        "rt._resource_tracker._stop()\n"  # wait for the tracker, so its output is complete
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines(keepends=True)
    assert lines and lines[0].startswith("Traceback") and lines[-1] == f"KeyError: {name!r}\n", r.stderr
    return lines


@pytest.mark.parametrize("name, rtype", [("/psm_10b3d52e", "shared_memory"), ("/mp-fjsm7p41", "semaphore")])
def test_batch_drops_only_the_resource_trackers_keyerror_from_its_stderr(name, rtype):
    import io

    # as Ray's driver prints a worker's forwarded lines: coloured prefix, then the text, then "\n"
    prefix = "\x1b[36m(MapWorker(MapBatches(vLLMEngineStageUDF)) pid=4242)\x1b[0m "
    other = [
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1, in <module>\n',
        "EngineDeadError: boom\n",
    ]
    out = io.StringIO()
    f = batch.TrackerNoiseFilter(out)
    f.write("Running 3/50\r")  # a progress redraw shows at once
    assert out.getvalue() == "Running 3/50\r"
    noise = _tracker_keyerror(name, rtype)
    for line in noise:
        f.write(prefix + line.rstrip("\n"))
        f.write("\n")
    f.write("rows: 50\n")
    for line in noise[:2] + other:  # a traceback that only starts alike passes whole
        f.write(line)
    f.close_out()
    assert out.getvalue() == "Running 3/50\rrows: 50\n" + "".join(noise[:2] + other)


def test_batch_local_runs_with_its_stderr_behind_the_filter(tmp_path, monkeypatch, capsys):
    import ray

    from infra.bench import batch_job

    noise = _tracker_keyerror()

    def job(*a, **k):
        print("".join(noise) + "(MapWorker pid=1) done", file=sys.stderr)  # what Ray forwards
        return {"rows": 1}

    monkeypatch.setattr(ray, "init", lambda **k: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(batch_job, "run", job)
    monkeypatch.setattr(batch, "engine_processes", lambda root=None: [])
    (tmp_path / "in.jsonl").write_text("")
    assert (
        batch.run_local(str(tmp_path), str(tmp_path / "in.jsonl"), str(tmp_path / "out"), 8, 4)["rows"] == 1
    )
    err = capsys.readouterr().err
    assert err == "(MapWorker pid=1) done\n" and not isinstance(sys.stderr, batch.TrackerNoiseFilter)


def test_batch_quiets_vllms_info_lines_unless_asked():
    env: dict = {}
    batch.quiet_vllm(env)
    assert env == {"VLLM_LOGGING_LEVEL": "WARNING"}
    env = {"VLLM_LOGGING_LEVEL": "DEBUG"}
    batch.quiet_vllm(env)
    assert env == {"VLLM_LOGGING_LEVEL": "DEBUG"}
