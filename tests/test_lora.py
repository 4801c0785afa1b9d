"""LoRA adapters: the catalog's word on which models take them, llmfleet:lora in the Serve
config (validated by Ray's LLMConfig and vLLM's EngineArgs), and `llmfleet finetune`'s checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.stack import lora
from infra.stack.config import ConfigError, load_stack_config

runner = CliRunner()
DEV = {"llmfleet:model": "deepseek-r1-distill-qwen-7b", "llmfleet:gpuInstanceType": "g6.xlarge"}
ADAPTERS = "s3://llmfleet-adapters-test/dev/"


def test_lora_serving_false_needs_a_reason(tmp_path: Path):
    from infra.catalog import LoraSupport

    with pytest.raises(ValueError, match="needs lora.reason"):
        LoraSupport(serving=False, source="a source")


def test_prod_r1_with_lora_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        load_stack_config({"llmfleet:model": "deepseek-r1", "llmfleet:lora": {"adapters": ADAPTERS}}, "prod")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "llmfleet:model = 'deepseek-r1': cannot take LoRA adapters (llmfleet:lora is set): vLLM 0.29 picks the kernel of its FP8 routed experts"
    )
    assert (
        "allowed: deepseek-r1-distill-qwen-7b, deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b"
        in msg
    )


@pytest.mark.parametrize(
    ("lora_value", "expected"),
    [
        ({"adapters": "/opt/adapters"}, "llmfleet:lora.adapters = '/opt/adapters': allowed: an s3://"),
        ({"adapters": "s3://llmfleet-adapters-test/a/../b"}, "llmfleet:lora.adapters = "),
        ({"adapters": ADAPTERS, "maxRank": 12}, "llmfleet:lora.maxRank = 12: allowed: one of 1, 8, 16"),
        ({"adapters": ADAPTERS, "maxAdapters": 0}, "llmfleet:lora.maxAdapters = 0"),
        (
            {"adapters": ADAPTERS, "rank": 8},
            "llmfleet:lora.rank = 8: unknown field; allowed: adapters, maxAdapters",
        ),
        ({"maxRank": 8}, "llmfleet:lora.adapters"),
    ],
)
def test_bad_lora_settings_are_one_line(lora_value, expected):
    with pytest.raises(ConfigError) as e:
        load_stack_config({**DEV, "llmfleet:lora": lora_value}, "dev")
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_adapters_inside_the_weights_prefix_are_refused():
    raw = {
        **DEV,
        "llmfleet:weightsUri": "s3://llmfleet-weights-test/qwen/",
        "llmfleet:lora": {"adapters": "s3://llmfleet-weights-test/qwen/adapters"},
    }
    with pytest.raises(ConfigError, match=r"^llmfleet:lora.adapters = .*inside llmfleet:weightsUri"):
        load_stack_config(raw, "dev")
    raw["llmfleet:lora"] = {"adapters": "s3://llmfleet-weights-test/adapters/"}  # beside it: fine
    assert load_stack_config(raw, "dev").lora is not None


@pytest.mark.parametrize("key", ["enable_lora", "max_loras", "max_lora_rank"])
def test_lora_engine_args_only_through_the_lora_key(key):
    with pytest.raises(ConfigError, match=rf"^llmfleet:engineArgs.{key} = .*set llmfleet:lora"):
        load_stack_config({**DEV, "llmfleet:engineArgs": {key: 1}}, "dev")


def test_dev_serve_config_with_lora_is_accepted_by_ray_and_vllm():
    from ray.serve.llm import LLMConfig

    from infra.rayconf import serve_config as sc

    setting = json.dumps({"adapters": ADAPTERS, "maxAdapters": 3, "maxRank": 32})
    res = runner.invoke(
        app, ["render", "serve-config", "--stack", "dev", "--offline", "-c", f"llmfleet:lora={setting}"]
    )
    assert res.exit_code == 0, res.output
    llm = yaml.safe_load(res.stdout)["applications"][0]["args"]["llm_configs"][0]
    assert llm["lora_config"] == {
        "dynamic_lora_loading_path": ADAPTERS.rstrip("/"),
        "max_num_adapters_per_replica": 3,
        "download_timeout_s": 30.0,
        "max_download_tries": 3,
    }
    kw = llm["engine_kwargs"]
    assert (kw["enable_lora"], kw["max_loras"], kw["max_lora_rank"]) == (True, 3, 32)
    config = LLMConfig.model_validate(llm)
    assert config.lora_config.max_num_adapters_per_replica == 3
    assert config.get_engine_config().engine_kwargs["max_lora_rank"] == 32
    sc.validate_engine_kwargs(kw, llm["model_loading_config"]["model_source"])  # vLLM's EngineArgs


def test_ray_validates_the_rendered_lora_config():
    """The rendered lora_config goes through Ray's LoraConfig: a path Ray cannot load adapters
    from (a host path) is refused at render, in one line."""
    from infra.rayconf import serve_config as sc

    base = sc.ServeInputs(
        model_id="m",
        model_source="/opt/llmfleet/models/m",
        tensor_parallel_size=1,
        pipeline_parallel_size=1,
        max_model_len=4096,
        gpu_model="L4",
    )
    good = {"dynamic_lora_loading_path": "s3://llmfleet-adapters-test/a", "max_num_adapters_per_replica": 2}
    doc = sc.render_serve_config(replace(base, lora_config=good, lora_engine_kwargs={"enable_lora": True}))
    assert sc._validate_with_ray(doc) == []
    bad = sc.render_serve_config(
        replace(base, lora_config={**good, "dynamic_lora_loading_path": "/opt/adapters"})
    )
    with pytest.raises(sc.ServeConfigError) as e:
        sc._validate_with_ray(bad)
    assert str(e.value).startswith("Ray Serve LLM rejected the LLMConfig: ") and "\n" not in str(e.value)
    assert "lora_config: Invalid lora_config" in str(e.value) and "/opt/adapters" in str(e.value)


def test_serve_config_without_lora_has_none():
    res = runner.invoke(app, ["render", "serve-config", "--stack", "dev", "--offline"])
    assert res.exit_code == 0, res.output
    llm = yaml.safe_load(res.stdout)["applications"][0]["args"]["llm_configs"][0]
    assert "lora_config" not in llm and "enable_lora" not in llm["engine_kwargs"]


def test_plan_lora_refuses_r1_and_plans_a_distill():
    res = runner.invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S", "--lora", "--json"])
    assert res.exit_code == 2
    err = json.loads(res.stdout)["error"]
    assert (err["key"], err["value"]) == ("--model", "deepseek-r1")
    assert (
        err["allowed"]
        == "deepseek-r1-distill-qwen-7b, deepseek-r1-distill-qwen-32b, deepseek-r1-distill-llama-70b"
    )
    assert "cannot take LoRA adapters (--lora)" in err["message"]
    res = runner.invoke(app, ["plan", "-m", "deepseek-r1", "-g", "L40S", "--json"])
    assert res.exit_code == 0, res.output  # without --lora R1 plans as before
    res = runner.invoke(
        app, ["plan", "-m", "deepseek-r1-distill-qwen-7b", "-g", "L4", "--tp", "1", "--lora", "--json"]
    )
    assert res.exit_code in (0, 3) and json.loads(res.stdout)["model"] == "deepseek-r1-distill-qwen-7b"


def test_refusal_helper():
    assert lora.refusal("deepseek-r1-distill-llama-70b") is None
    assert lora.refusal("deepseek-r1", "--model").startswith(
        "--model = 'deepseek-r1': cannot take LoRA adapters: "
    )
    assert lora.refusal("gpt-2").startswith(
        "llmfleet:model = 'gpt-2': not a catalog model that takes LoRA adapters; allowed: deepseek-r1-distill-qwen-7b"
    )


# ---------------------------------------------------------------- llmfleet finetune


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "train.jsonl"
    rows = [
        {"prompt": "2+2?", "completion": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return p


def _err(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0].removeprefix("error: ")


def test_finetune_prod_r1_is_refused_with_one_line(data: Path):
    res = runner.invoke(app, ["finetune", "--stack", "prod", "--data", str(data), "--name", "support-v1"])
    assert res.exit_code == 2
    assert _err(res).startswith(
        "llmfleet:model = 'deepseek-r1': cannot take LoRA adapters: vLLM 0.29 picks the kernel of its FP8 routed experts"
    )


def test_finetune_dev_without_llmfleet_lora_says_where_the_adapter_would_go(data: Path):
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(data), "--name", "support-v1"])
    assert res.exit_code == 1
    assert _err(res).startswith(
        "llmfleet:lora: not set on stack dev: the Serve app loads adapters from nowhere"
    )


def test_finetune_stack_needs_the_dashboards_port_forward(data: Path):
    lora_on = ["-c", f'llmfleet:lora={{"adapters": "{ADAPTERS}"}}']
    args = ["finetune", "--stack", "dev", "--data", str(data), "--name", "a", *lora_on]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert _err(res) == (
        "stack dev: Ray's dashboard (the Jobs API) is reachable only inside the cluster's network; allowed: "
        "run the stack's dashboard_port_forward_command (pulumi stack output) and pass --dashboard http://127.0.0.1:8265"
    )
    res = runner.invoke(app, [*args, "--dashboard", "http://10.0.0.5:8265"])
    assert res.exit_code == 2
    assert (
        _err(res)
        == "--dashboard 'http://10.0.0.5:8265': allowed: http://127.0.0.1:PORT (the SSM port forward's local end)"
    )


def test_finetune_stack_says_when_the_dashboard_does_not_answer(data: Path, tmp_path: Path):
    import socket

    from tests.moto_fixtures import DUMMY_CREDS, MotoServer

    raw = json.loads(Path("tests/data/stack_outputs_prod.json").read_text())
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps({**raw, "model": DEV["llmfleet:model"], "served_model": DEV["llmfleet:model"]})
    )
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with MotoServer() as moto:  # the stack's Ray token is read first (tests/test_finetune_auth.py)
        moto.client("ssm").put_parameter(Name=raw["ray_token_parameter"], Value="t", Type="SecureString")
        res = runner.invoke(
            app,
            ["finetune", "--stack", "dev", "--data", str(data), "--name", "a", "--outputs", str(outputs),
             "-c", f'llmfleet:lora={{"adapters": "{ADAPTERS}"}}', "--dashboard", f"http://127.0.0.1:{port}"],
            env={**DUMMY_CREDS, "AWS_ENDPOINT_URL": moto.url},
        )  # fmt: skip
    assert res.exit_code == 1
    assert _err(res).startswith(f"Ray's dashboard at http://127.0.0.1:{port}: not reachable (")


def test_finetune_local_needs_a_running_cluster(data: Path, tmp_path: Path):
    env = {"LLMFLEET_STATE_DIR": str(tmp_path / "none")}
    res = runner.invoke(
        app, ["finetune", "--local", "--cluster", "nope", "--data", str(data), "--name", "a"], env=env
    )
    assert res.exit_code == 1
    assert _err(res) == "local cluster 'nope': not up; run `llmfleet local up --name nope ...`"


def test_finetune_subcommands_check_the_job_id(tmp_path: Path):
    from infra.finetune_job import JOB_ID_ALLOWED, FinetuneJobError, check_job_id

    assert check_job_id("llmfleet-lora-blue-0a1b2c") == "llmfleet-lora-blue-0a1b2c"
    for bad in ("raysubmit_123", "llmfleet-lora-", "llmfleet-lora-a;rm -rf /", "llmfleet-lora-../x"):
        with pytest.raises(
            FinetuneJobError, match=f"allowed: {JOB_ID_ALLOWED}".replace("(", r"\(").replace(")", r"\)")
        ):
            check_job_id(bad)
    env = {"LLMFLEET_STATE_DIR": str(tmp_path)}
    res = runner.invoke(app, ["finetune", "status", "x", "--local", "--cluster", "nope"], env=env)
    assert res.exit_code == 1 and _err(res).startswith("local cluster 'nope': not up")


def test_the_jobs_entrypoint_quotes_every_value():
    import shlex

    from infra.finetune_job import Target, entrypoint, fmt_progress, progress
    from ray_cluster.finetune import FinetuneError, Progress, TrainSpec

    t = Target("stack dev", "http://127.0.0.1:8265", "/opt/llm/models/x y", "m", "s3://b/a/", "python3")
    spec = TrainSpec(base="", data="data.jsonl", name="n1", out="s3://b/a/", steps=3, rank=16, alpha=32)
    argv = shlex.split(entrypoint(t, spec))
    assert argv[:3] == ["python3", "-m", "ray_cluster.finetune"]
    assert argv[argv.index("--base") + 1] == "/opt/llm/models/x y" and argv[argv.index("--rank") + 1] == "16"
    assert argv[argv.index("--out") + 1] == "s3://b/a/" and argv[argv.index("--data") + 1] == "data.jsonl"
    with pytest.raises(FinetuneError, match="--name 'a b'"):
        entrypoint(t, replace(spec, name="a b"))
    # a worker's progress line, as Ray forwards it to the job's log, and its rendering
    line = "(RayTrainWorker pid=12, ip=10.0.0.3) " + Progress(3, 30, 5.25, 1234.5, 75.0).line()
    p = progress(line)
    assert p == {"step": 3, "steps": 30, "loss": 5.25, "tokens_per_s": 1234.5, "eta_s": 75.0}
    assert fmt_progress(p) == "step 3/30  loss 5.2500  1,234 tokens/s  ETA 1:15"
    assert progress("step 3 of something else") is None and progress("llmfleet-train {not json") is None


def test_progress_lines_survive_rays_log_dedup_and_print_once():
    """What the first e2e run showed: the worker's lines reach the job driver from two log
    monitors (the local hosts share Ray's log dir) and Ray's deduplicator folds lines that differ
    only in numbers. With the job's env (JOB_ENV) Ray's own LogDeduplicator keeps every progress
    line; the CLI then shows each step once."""
    from ray._private.ray_logging import LogDeduplicator

    from infra.finetune_job import JOB_ENV, Once, progress
    from ray_cluster.finetune import Progress

    def forwarded(allow: str | None) -> list[str]:
        dedup = LogDeduplicator(5, allow, None, _timesource=lambda: 100.0)
        out: list[str] = []
        for step in range(1, 13):
            line = Progress(step, 12, 6.0 - step / 10, 1000.0 + step, 12.0 - step).line()
            for ip in ("10.0.0.2", "10.0.0.3"):  # the same worker's line, from two monitors
                batch = {"ip": ip, "pid": 134, "lines": [line]}
                out += [ln for b in dedup.deduplicate(batch) for ln in b["lines"]]
        return out

    folded = [p["step"] for ln in forwarded(None) if (p := progress(ln))]
    assert sorted(set(folded)) != list(range(1, 13))  # Ray's default loses steps
    kept = forwarded(JOB_ENV["RAY_DEDUP_LOGS_ALLOW_REGEX"])
    assert len(kept) == 24  # every copy: nothing folded
    once = Once()
    shown = [p["step"] for ln in kept if (p := progress(ln)) and once.fresh(p)]
    assert shown == list(range(1, 13))
    done = {"done": "s3://b/a/n1", "manifest": {}}
    assert once.fresh(done) and not once.fresh(done)
    assert not once.fresh({"step": "3"})  # not a step number


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "m:1", "", "x" * 65])
def test_finetune_name_must_be_one_safe_component(data: Path, name: str):
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(data), "--name", name])
    assert res.exit_code == 2
    assert _err(res).startswith(f"--name {name!r}: allowed: 1-64 letters")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", "line 2: not JSON"),
        ('{"prompt": "q"}', "line 2: completion: Field required"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "line 2: no assistant turn"),
        ('{"messages": [{"role": "tool", "content": "q"}]}', "line 2: messages[0].role"),
        ('["prompt", "completion"]', "line 2: "),
    ],
)
def test_finetune_refuses_a_bad_line(tmp_path: Path, line: str, expected: str):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(p), "--name", "a"])
    assert res.exit_code == 2
    msg = _err(res)
    assert msg.startswith(f"--data {str(p)!r} {expected}") and "allowed: one JSON object per line" in msg


def test_finetune_refuses_empty_or_missing_data(tmp_path: Path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    for p, why in ((empty, "no examples"), (tmp_path / "missing.jsonl", "not a file")):
        res = runner.invoke(app, ["finetune", "--stack", "dev", "--data", str(p), "--name", "a"])
        assert res.exit_code == 2 and why in _err(res)


def test_finetune_needs_exactly_one_target(data: Path):
    res = runner.invoke(app, ["finetune", "--data", str(data), "--name", "a"], env={"PULUMI_STACK": ""})
    assert res.exit_code == 2 and _err(res).startswith("target: missing")
    res = runner.invoke(app, ["finetune", "--local", "--stack", "dev", "--data", str(data), "--name", "a"])
    assert res.exit_code == 2 and _err(res).startswith("target: --local and --stack together")


def _declares_supports_lora(architecture: str) -> bool:
    """Whether the installed vLLM's class for `architecture` has SupportsLoRA among its bases,
    read from vLLM's source (registry.py's entry, then the class and its bases in that module),
    without importing vLLM (seconds of torch). tests/test_lora_engine.py asks vLLM's own
    supports_lora() of the class it loads."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "model_executor" / "models"
    registry = ast.parse((models_dir / "registry.py").read_text())
    entry = next(
        node.values[i]
        for node in ast.walk(registry)
        if isinstance(node, ast.Dict)
        for i, k in enumerate(node.keys)
        if isinstance(k, ast.Constant) and k.value == architecture
    )
    module, cls = (e.value for e in entry.elts)  # type: ignore[attr-defined]
    classes = {
        n.name: [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in n.bases]
        for n in ast.parse((models_dir / f"{module}.py").read_text()).body
        if isinstance(n, ast.ClassDef)
    }
    todo, seen = [cls], set()
    while todo:
        name = todo.pop()
        if name == "SupportsLoRA":
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(classes.get(name, []))
    return False


def test_catalog_lora_models_declare_supports_lora_in_vllms_source():
    """Every catalog model's vLLM class declares SupportsLoRA, R1's too: the catalog allows the
    dense ones (tests/test_lora_engine.py serves an adapter on the Llama class) and refuses R1
    for what is unproven (its FP8 MoE kernel path), and says so in its reason and source."""
    models = load_catalog().models
    assert [m for m in models.values() if m.lora.serving] == [m for m in models.values() if m.moe is None]
    for m in models.values():
        assert _declares_supports_lora(m.architecture), m.id
    r1 = models["deepseek-r1"].lora
    assert not r1.serving and "routed experts" in r1.reason and "SupportsLoRA" in r1.source
    # what the check would see fail: a class without it (vLLM's embedding-only BERT)
    assert not _declares_supports_lora("BertModel")


def test_finetune_local_takes_no_stack_override(data: Path):
    res = runner.invoke(
        app, ["finetune", "--local", "-c", "llmfleet:replicas=2", "--data", str(data), "--name", "a"]
    )
    assert res.exit_code == 2 and _err(res).startswith("--config 'llmfleet:replicas=2': a stack override")


# ---------------------------------------------------------------- the local cluster's trainer host


def test_a_trainer_host_advertises_train_slots_and_no_engine_resource():
    from infra.local.hosts import Host
    from infra.local.layout import LocalError, Ports, node_argv, plan_layout
    from ray_cluster import contract
    from ray_cluster.ray_start import worker_start_command

    lay = plan_layout(3, model_id="llmfleet/tiny-llama", trainers=1)
    assert lay.replicas == 1 and [lay.role(i) for i in range(3)] == ["head", "worker", "trainer"]
    with pytest.raises(LocalError, match=r"--train-hosts 1: allowed 0..0 with --hosts 2"):
        plan_layout(2, trainers=1)
    head, h = Host("h0", "10.0.0.1"), Host("h2", "10.0.0.3")
    argv = node_argv("trainer", h, head, Ports(6379, 8265, 8000), lay, "/tmp/x")
    assert argv[argv.index("--cpu-slots") + 1] == "0" and argv[argv.index("--train-slots") + 1] == "1"
    assert argv[argv.index("--num-cpus") + 1] == "1"
    start = worker_start_command("10.0.0.1:6379", "10.0.0.3", 0, device="cpu", cpu_slots=0, train_slots=1)
    assert f'--resources={{"{contract.TRAIN_RESOURCE}":1}}' in start
    assert not any(contract.CPU_WORKER_RESOURCE in a for a in start)  # no engine bundle fits here
    serving = worker_start_command("10.0.0.1:6379", "10.0.0.2", 0, device="cpu", cpu_slots=2)
    assert f'--resources={{"{contract.CPU_WORKER_RESOURCE}":2}}' in serving
    assert contract.TRAIN_RESOURCE not in json.dumps(contract.placement_bundles(2, 1, "cpu"))


def test_local_lora_renders_ray_serve_llms_lora_config_from_the_store():
    from infra.local import adapters
    from infra.local.layout import plan_layout, render_local_serve_config

    lay = plan_layout(3, model_id="llmfleet/tiny-llama", trainers=1)
    doc = render_local_serve_config(
        "llmfleet/tiny-llama", "/m", lay, "10.0.0.1", 8000, lora=adapters.settings()
    )
    llm = doc["applications"][0]["args"]["llm_configs"][0]
    assert llm["lora_config"]["dynamic_lora_loading_path"] == "s3://llmfleet-local/adapters"
    assert llm["engine_kwargs"]["enable_lora"] is True and llm["engine_kwargs"]["max_lora_rank"] == 16
    assert llm["deployment_config"]["num_replicas"] == 1
    assert (
        "lora_config"
        not in render_local_serve_config("m", "/m", lay, "10.0.0.1", 8000)["applications"][0]["args"][
            "llm_configs"
        ][0]
    )


def test_local_status_takes_a_trainer_host():
    """The README walk's `llmfleet local status` on a cluster with `--train-hosts 1` stopped on a
    validation traceback (HostSlot's role allowed head and worker only)."""
    from infra.status.model import HostSlot, RayNode, classify

    slot = HostSlot(name="llmf-local-h2", role="trainer", ip="10.213.1.12", ranks=0, status="alive")
    node = RayNode.model_validate({"node_id": "n2", "ip": "10.213.1.12", "alive": True, "is_head": False})
    assert classify(slot, [node], "") == slot
    assert classify(slot, [], "").status == "lost"
