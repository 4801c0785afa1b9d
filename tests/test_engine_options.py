"""llmfleet:engineArgs / llmfleet:serveOptions: checked against vLLM's EngineArgs and Ray Serve's
DeploymentSchema, held to the plan, and carried into every rendering of the Serve config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.catalog import engine_args as catalog
from infra.cli import app
from infra.constants import REPO_ROOT
from infra.rayconf import serve_config as sc
from infra.rayconf import serving
from infra.stack import engine_options
from infra.stack.config import ConfigError
from infra.stack.files import load_config
from infra.stack.resolve import resolve

OUTPUTS_FILE = Path(__file__).parent / "data" / "stack_outputs_prod.json"
runner = CliRunner()


def _llm(doc: dict) -> dict:
    return doc["applications"][0]["args"]["llm_configs"][0]


def _render(*overrides: str):
    """`llmfleet render serve-config` of prod from its outputs file, with -c overrides."""
    args = ["render", "serve-config", "-s", "prod", "--outputs", str(OUTPUTS_FILE)]
    for o in overrides:
        args += ["-c", o]
    return runner.invoke(app, args)


def _resolved(*overrides: str):
    return resolve(load_config("prod", list(overrides)))


# ---------------------------------------------------------------- the catalog


def test_catalog_is_the_installed_vllms_engine_args():
    # Regenerate with `python -m infra.catalog.engine_args --export` after a vLLM upgrade.
    on_disk = json.loads(catalog.PATH.read_text())
    assert on_disk == catalog.export()
    fields = catalog.engine_args()
    assert fields["max_num_seqs"]["schema"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert fields["compilation_config"]["schema"] is None  # vLLM's own class: checked at render


# ---------------------------------------------------------------- the done-when lines, through the CLI


def test_an_engine_arg_from_c_reaches_the_rendered_engine_kwargs():
    res = _render('llmfleet:engineArgs={"max_num_seqs": 48}')
    assert res.exit_code == 0, res.output
    kw = _llm(yaml.safe_load(res.stdout))["engine_kwargs"]
    assert kw["max_num_seqs"] == 48
    # the planner's values (as the deployed stack's outputs carry them) stay the defaults around it
    deployed = json.loads(OUTPUTS_FILE.read_text())
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (8, 3)
    assert kw["max_model_len"] == int(deployed["max_model_len"])


def test_a_misspelt_engine_arg_is_one_line_with_did_you_mean():
    res = _render('llmfleet:engineArgs={"max_num_seq": 48}')
    assert res.exit_code == 2
    assert res.output.strip() == (
        "error: llmfleet:engineArgs.max_num_seq = 48: not an argument of vLLM "
        f"{catalog.vllm_version()}'s EngineArgs; did you mean max_num_seqs?"
    )


def test_a_tensor_parallel_size_against_the_plan_names_the_plans():
    res = _render('llmfleet:engineArgs={"tensor_parallel_size": 4}')
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: llmfleet:engineArgs.tensor_parallel_size = 4: ")
    assert "the plan's tensor parallel size is 8" in line and "allowed: 8 or unset" in line
    # equal to the plan is no contradiction
    assert _render('llmfleet:engineArgs={"tensor_parallel_size": 8}').exit_code == 0


# ---------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            'llmfleet:engineArgs={"max_num_seqs": "many"}',
            "llmfleet:engineArgs.max_num_seqs = 'many': allowed: int | None (vLLM",
        ),
        (
            'llmfleet:engineArgs={"kv_cache_dtype": "fp7"}',
            "llmfleet:engineArgs.kv_cache_dtype = 'fp7': allowed: Literal['auto', 'float16'",
        ),
        (
            'llmfleet:engineArgs={"model": "/tmp/other"}',
            "llmfleet:engineArgs.model = '/tmp/other': not allowed here: the weights' path comes from llmfleet:model",
        ),
        (
            'llmfleet:engineArgs={"quantization": "awq"}',
            "llmfleet:engineArgs.quantization = 'awq': not allowed here: set llmfleet:quantization",
        ),
        (
            # the policy pack's advisory reads llmfleet:trustRemoteCode: the map cannot go around it
            'llmfleet:engineArgs={"trust_remote_code": true}',
            "llmfleet:engineArgs.trust_remote_code = true: allowed: false or unset (llmfleet:trustRemoteCode decides it)",
        ),
        (
            'llmfleet:engineArgs={"hf_token": "hf_abc"}',
            "llmfleet:engineArgs.hf_token = 'hf_abc': not allowed here: the Serve config holds no secrets",
        ),
        (
            'llmfleet:engineArgs={"allowed_local_media_path": "/"}',
            "llmfleet:engineArgs.allowed_local_media_path = '/': not allowed here: a path on the hosts",
        ),
        (
            'llmfleet:engineArgs={"reasoning_parser_plugin": "/opt/llmfleet/models/deepseek-r1/p.py"}',
            "llmfleet:engineArgs.reasoning_parser_plugin = '/opt/llmfleet/models/deepseek-r1/p.py': not allowed "
            "here: vLLM would import a Python file",
        ),
        (
            'llmfleet:serveOptions={"ray_actor_options": {"runtime_env": {"pip": ["x"]}}}',
            "llmfleet:serveOptions.ray_actor_options = ",
        ),
        (
            'llmfleet:engineArgs={"gpu_memory_utilization": 0.95}',
            "llmfleet:engineArgs.gpu_memory_utilization = 0.95: allowed: 0.9 or unset (llmfleet:gpuMemoryUtilization",
        ),
        (
            'llmfleet:engineArgs={"max_model_len": 500000}',
            "llmfleet:engineArgs.max_model_len = 500000: the plan's KV cache holds 420353 tokens; allowed: 24576 or unset",
        ),
        (
            'llmfleet:engineArgs={"max_model_len": 4096}',
            "llmfleet:engineArgs.max_model_len = 4096: the plan sizes the KV cache for 24576; allowed: 24576 or unset",
        ),
        (
            'llmfleet:engineArgs={"pipeline_parallel_size": 2}',
            "llmfleet:engineArgs.pipeline_parallel_size = 2: the plan's pipeline parallel size is 3 (8x L40S per host, 3 hosts per replica)",
        ),
        (
            "llmfleet:engineArgs=[48]",
            "llmfleet:engineArgs = [48]: allowed: input should be a valid dictionary",
        ),
        (
            "llmfleet:engineArgs={max_num_seqs: 48",
            "llmfleet:engineArgs = '{max_num_seqs: 48': not valid JSON; allowed: a YAML/JSON mapping",
        ),
        (
            'llmfleet:serveOptions={"max_ongoing_request": 8}',
            "llmfleet:serveOptions.max_ongoing_request = 8: not an option of Ray Serve's DeploymentSchema; "
            "did you mean max_ongoing_requests?",
        ),
        (
            'llmfleet:serveOptions={"max_ongoing_requests": 0}',
            "llmfleet:serveOptions.max_ongoing_requests = 0: allowed: a number > 0 (Ray Serve's DeploymentSchema)",
        ),
        (
            # Ray's AutoscalingConfig ignores an unknown field: a typo would leave its default in force
            'llmfleet:serveOptions={"autoscaling_config": {"target_ongoing_request": 4}}',
            "llmfleet:serveOptions.autoscaling_config.target_ongoing_request = 4: not a field of Ray Serve's "
            "AutoscalingConfig; did you mean target_ongoing_requests?",
        ),
        (
            'llmfleet:serveOptions={"autoscaling_config": {"target_ongoing_requests": -1}}',
            "llmfleet:serveOptions.autoscaling_config.target_ongoing_requests = -1: allowed: a number > 0",
        ),
        (
            'llmfleet:serveOptions={"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}',
            "llmfleet:serveOptions.autoscaling_config.max_replicas = 4: allowed: <= llmfleet:replicas = 1",
        ),
        (
            'llmfleet:serveOptions={"num_replicas": 2}',
            "llmfleet:serveOptions.num_replicas = 2: allowed: 1 or unset (llmfleet:replicas decides it)",
        ),
        (
            'llmfleet:serveOptions={"placement_group_strategy": "SPREAD"}',
            "llmfleet:serveOptions.placement_group_strategy = 'SPREAD': not allowed here: the engine's bundles",
        ),
        (
            'llmfleet:serveOptions={"ingress": {"ray_actor_options": {"num_cpus": 4}}}',
            'llmfleet:serveOptions.ingress.ray_actor_options = {"num_cpus": 4}: not allowed here: the ingress is pinned',
        ),
    ],
)
def test_bad_options_are_one_line_naming_the_key_the_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        _resolved(override)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


# Every key llmfleet refuses, written out: a key dropped from engine_options' maps fails here.
REFUSED_ENGINE_KEYS = [
    "model", "served_model_name", "tokenizer", "quantization", "distributed_executor_backend",
    "data_parallel_size", "hf_token", "reasoning_parser_plugin", "download_dir", "hf_config_path",
    "allowed_local_media_path", "mm_encoder_fp8_scale_path", "mm_encoder_fp8_scale_save_path",
    "enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras",
]  # fmt: skip
REFUSED_SERVE_KEYS = [
    "name", "placement_group_bundles", "placement_group_strategy", "placement_group_bundle_label_selector",
    "ray_actor_options", "deployment_actors",
]  # fmt: skip
REFUSED_INGRESS_KEYS = [*REFUSED_SERVE_KEYS, "num_replicas", "autoscaling_config"]


@pytest.mark.parametrize("key", REFUSED_ENGINE_KEYS)
def test_each_refused_engine_arg_is_refused_and_is_one_of_vllms(key):
    # a vLLM field (a refusal of a name vLLM does not have would guard nothing)
    assert key in catalog.engine_args()
    with pytest.raises(engine_options.OptionError) as e:
        engine_options.check_engine_args({key: "x"})
    assert (
        str(e.value)
        == f"llmfleet:engineArgs.{key} = 'x': not allowed here: {engine_options.REFUSED_ENGINE[key]}"
    )


@pytest.mark.parametrize(
    ("where", "key"),
    [("llm", k) for k in REFUSED_SERVE_KEYS] + [("ingress", k) for k in REFUSED_INGRESS_KEYS],
)
def test_each_refused_serve_option_is_refused_and_is_one_of_rays(where, key):
    assert key in engine_options.deployment_fields()
    options, prefix, refused = {key: "x"}, "llmfleet:serveOptions", engine_options.REFUSED_SERVE
    if where == "ingress":
        options, prefix, refused = {"ingress": options}, f"{prefix}.ingress", engine_options.REFUSED_INGRESS
    with pytest.raises(engine_options.OptionError) as e:
        engine_options.check_serve_options(options)
    assert str(e.value) == f"{prefix}.{key} = 'x': not allowed here: {refused[key]}"


def test_no_key_is_refused_that_the_lists_above_leave_out():
    assert sorted(engine_options.REFUSED_ENGINE) == sorted(REFUSED_ENGINE_KEYS)
    assert sorted(engine_options.REFUSED_SERVE) == sorted(REFUSED_SERVE_KEYS)
    assert sorted(engine_options.REFUSED_INGRESS) == sorted(REFUSED_INGRESS_KEYS)


# ---------------------------------------------------------------- rendering


def test_serve_options_reach_the_llm_server_and_the_ingress_and_ray_accepts_them():
    res = _render(
        'llmfleet:serveOptions={"max_ongoing_requests": 32, "max_queued_requests": 64, '
        '"autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16}, '
        '"ingress": {"max_ongoing_requests": 256}}',
        'llmfleet:engineArgs={"enable_prefix_caching": false, "kv_cache_dtype": "fp8"}',
    )
    assert res.exit_code == 0, res.output  # validated by Ray's DeploymentSchema and vLLM's EngineArgs
    doc = yaml.safe_load(res.stdout)
    dep = _llm(doc)["deployment_config"]
    # autoscaling replaces the fixed count (Serve refuses both); the map's fields go over the
    # plan's defaults (tests/test_serve_autoscaling.py)
    assert dep == {
        "max_ongoing_requests": 32,
        "max_queued_requests": 64,
        "autoscaling_config": {
            "min_replicas": 1, "max_replicas": 1, "initial_replicas": 1, "target_ongoing_requests": 16,
            "upscale_delay_s": 15.0, "downscale_delay_s": 1800,
        },
    }  # fmt: skip
    ingress = doc["applications"][0]["args"]["ingress_deployment_config"]
    assert ingress["max_ongoing_requests"] == 256 and ingress["ray_actor_options"]["num_cpus"] == 1
    kw = _llm(doc)["engine_kwargs"]
    assert kw["enable_prefix_caching"] is False and kw["kv_cache_dtype"] == "fp8"  # over the default


def test_vllms_own_config_classes_are_checked_by_vllm_at_the_final_render():
    # compilation_config is vLLM's CompilationConfig: the catalog has no schema for it, so the
    # stack loads and vLLM's EngineArgs refuses it when the Serve config is rendered.
    stack = _resolved('llmfleet:engineArgs={"compilation_config": {"mode": 9}}')
    outs = json.loads(OUTPUTS_FILE.read_text())
    with pytest.raises(
        sc.ServeConfigError,
        match=r"^vLLM rejected the engine_kwargs: compilation_config.mode = 9: allowed: 0, 1, 2 or 3$",
    ):
        serving.render_for_outputs(outs, stack.cfg, stack.plan)
    # the node scripts' render (the Pulumi program's) checks it too: only such a stack imports vLLM
    with pytest.raises(
        sc.ServeConfigError, match="^vLLM rejected the engine_kwargs: compilation_config.mode"
    ):
        serving.serve_config_yaml(stack.cfg, stack.plan)
    res = _render('llmfleet:engineArgs={"compilation_config": {"mode": 1}}')
    assert res.exit_code == 0, res.output
    assert _llm(yaml.safe_load(res.stdout))["engine_kwargs"]["compilation_config"] == {"mode": 1}


@pytest.mark.parametrize(
    "value, line",
    [
        ({"mode": 9}, "compilation_config.mode = 9: allowed: 0, 1, 2 or 3"),
        # vLLM's own validator's words
        (
            {"mode": "fast"},
            "compilation_config.mode = 'fast': Invalid compilation mode: fast. Valid modes are: ",
        ),
        (
            {"no_such_field": 1},
            "compilation_config.no_such_field = 1: not a field of vLLM's CompilationConfig",
        ),
        ("-O3", "compilation_config = '-O3': allowed: a mapping of vLLM's CompilationConfig fields"),
    ],
)
def test_a_config_class_engine_arg_reaches_vllms_own_validation_at_render(value, line):
    """compilation_config has no JSON schema in the catalog (its type is vLLM's CompilationConfig):
    the Serve config render hands it to vLLM's EngineArgs, whose own class refuses a bad value;
    the line names the engine argument and its field, the value and what vLLM allows."""
    kwargs = {"tensor_parallel_size": 1, "max_model_len": 4096, "compilation_config": value}
    with pytest.raises(sc.ServeConfigError) as e:
        sc.validate_engine_kwargs(kwargs, "/opt/m")
    msg = str(e.value)
    assert msg.startswith(f"vLLM rejected the engine_kwargs: {line}") and "\n" not in msg, msg
    # the same value from a stack's llmfleet:engineArgs is refused by `llmfleet render` in that line
    res = _render(f"llmfleet:engineArgs={json.dumps({'compilation_config': value})}")
    assert res.exit_code != 0 and line in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_a_good_config_class_engine_arg_reaches_the_rendered_engine_kwargs():
    good = {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4]}
    sc.validate_engine_kwargs({"compilation_config": good, "kernel_config": {}}, "/opt/m")
    res = _render(f"llmfleet:engineArgs={json.dumps({'compilation_config': good})}")
    assert res.exit_code == 0, res.output
    assert _llm(yaml.safe_load(res.stdout))["engine_kwargs"]["compilation_config"] == good


def test_the_node_script_carries_the_engine_args(tmp_path):
    # The head's node script (SSM on EC2, the SSH bootstrap on owned hosts) takes serve_config_yaml.
    stack = _resolved(
        'llmfleet:engineArgs={"max_num_seqs": 48}', 'llmfleet:serveOptions={"max_ongoing_requests": 24}'
    )
    doc = yaml.safe_load(serving.serve_config_yaml(stack.cfg, stack.plan))
    assert _llm(doc)["engine_kwargs"]["max_num_seqs"] == 48
    assert _llm(doc)["deployment_config"] == {"num_replicas": 1, "max_ongoing_requests": 24}


def _project_with(tmp_path: Path, stack_text: str) -> Path:
    (tmp_path / "stacks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "stacks" / "Pulumi.t.yaml").write_text(stack_text)
    return tmp_path


def test_a_stack_file_holds_them_as_yaml_maps(tmp_path):
    proj = _project_with(
        tmp_path,
        "config:\n  llmfleet:engineArgs:\n    max_num_seqs: 48\n    enable_chunked_prefill: false\n"
        "  llmfleet:serveOptions:\n    max_ongoing_requests: 32\n",
    )
    cfg = load_config("t", project_dir=proj)
    assert cfg.engine_args == {"max_num_seqs": 48, "enable_chunked_prefill": False}
    assert cfg.serve_options == {"max_ongoing_requests": 32}
    bad = _project_with(tmp_path / "b", "config:\n  llmfleet:engineArgs:\n    max_num_seq: 48\n")
    with pytest.raises(ConfigError, match=r"engineArgs.max_num_seq = 48: .*did you mean max_num_seqs\?$"):
        load_config("t", project_dir=bad)


def test_owned_keys_are_the_documented_ones():
    # README "Serving knobs" lists these as typed keys; keep both in step.
    readme = (REPO_ROOT / "README.md").read_text()
    for key in engine_options.OWNED:
        assert f"`{key}`" in readme, key
