"""Serve config from stack outputs + plan (ServeDeploySchema), the CPU variant, the gated app."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.cli import app
from ray_cluster import serve_app
from ray_cluster import serve_config as sc

OUTPUTS_FILE = Path(__file__).parent / "data" / "stack_outputs_prod.json"
runner = CliRunner()


def _llm(doc: dict) -> dict:
    return doc["applications"][0]["args"]["llm_configs"][0]


def test_prod_offline_tp8_pp_equals_plan_nodes():
    from infra.offline import load_config

    res = runner.invoke(app, ["render", "serve-config", "--stack", "prod"])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    plan = load_config("prod").plan()
    kw = _llm(doc)["engine_kwargs"]
    assert kw["tensor_parallel_size"] == 8
    assert kw["pipeline_parallel_size"] == plan.nodes == 3
    assert kw["max_model_len"] == plan.max_model_len
    assert kw["gpu_memory_utilization"] == plan.gpu_memory_utilization
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(doc)


def test_llm_config_shape():
    doc = sc.render_serve_config(
        sc.ServeInputs("deepseek-ai/DeepSeek-R1", "/opt/m/deepseek-r1", 8, 3, 8192, 0.9, gpu_model="L20")
    )
    app_ = doc["applications"][0]
    assert app_["import_path"] == "ray_cluster.serve_app:build_app"
    assert app_["args"]["api_token_env"] == sc.DEFAULT_TOKEN_ENV
    llm = _llm(doc)
    assert llm["model_loading_config"] == {
        "model_id": "deepseek-ai/DeepSeek-R1",
        "model_source": "/opt/m/deepseek-r1",
    }
    pg = llm["placement_group_config"]
    assert pg["strategy"] == "PACK"
    assert pg["bundles"] == [{"GPU": 1, "gpu_model:L20": 1}] * 24
    assert "accelerator_type" not in llm  # Ray's list has no L20
    kw = llm["engine_kwargs"]
    assert kw["enable_chunked_prefill"] and kw["enable_prefix_caching"] and kw["trust_remote_code"]
    env = llm["runtime_env"]["env_vars"]
    assert env["NCCL_IB_DISABLE"] == "1" and all(isinstance(v, str) for v in env.values())
    # Per-node NIC names are set by ray_cluster.node before `ray start`, never cluster-wide.
    assert not {"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "VLLM_HOST_IP"} & set(env)
    assert sc.validate_serve_config(doc) is not None


def test_efa_uses_the_ofi_provider_not_ib_disable():
    env = sc.cluster_env_vars(efa=True)
    assert env["FI_PROVIDER"] == "efa" and "NCCL_IB_DISABLE" not in env


def test_outputs_layout_must_match_the_plan(tmp_path):
    outs = json.loads(OUTPUTS_FILE.read_text())
    outs["pipeline_parallel_size"] = 2
    f = tmp_path / "o.json"
    f.write_text(json.dumps(outs))
    res = runner.invoke(app, ["render", "serve-config", "-s", "prod", "--outputs", str(f)])
    assert res.exit_code == 2
    assert "TP 8 x PP 2" in res.output and "TP 8 x PP 3" in res.output


def test_outputs_file_to_file(tmp_path):
    out = tmp_path / "serve.yaml"
    res = runner.invoke(
        app, ["render", "serve-config", "-s", "prod", "--outputs", str(OUTPUTS_FILE), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(out.read_text())
    assert _llm(doc)["model_loading_config"]["model_source"] == "/opt/llmfleet/models/deepseek-r1"
    assert _llm(doc)["runtime_env"]["env_vars"]["FI_PROVIDER"] == "efa"  # g6e.48xlarge has EFA


def test_schema_rejection_is_one_line():
    doc = sc.render_serve_config(sc.ServeInputs("m", "/m", 1, 1, 256))
    doc["proxy_location"] = "Everywhere-ish"
    with pytest.raises(sc.ServeConfigError, match="Ray rejected the Serve config: proxy_location"):
        sc.validate_serve_config(doc)


def test_bad_inputs_name_the_key():
    with pytest.raises(sc.ServeConfigError, match="api_token_env = 'not a name'"):
        sc.render_serve_config(sc.ServeInputs("m", "/m", 1, 1, 256, api_token_env="not a name"))
    with pytest.raises(sc.ServeConfigError, match="engine = 'sglang'"):
        sc.render_serve_config(sc.ServeInputs("m", "/m", 1, 1, 256), engine="sglang")


def test_llm_config_validation_when_importable():
    cls, why = sc.llm_config_validator()
    if cls is None:
        pytest.skip(f"LLMConfig not importable here: {why}")
    cls.model_validate(_llm(sc.render_serve_config(sc.ServeInputs("m", "/m", 8, 3, 8192, gpu_model="L20"))))


def test_cpu_variant_matches_the_cpu_engine_contract():
    from ray_cluster.engines.cpu import parse_args
    from ray_cluster.tiny_model import MODEL_ID

    doc = sc.render_serve_config(
        sc.ServeInputs(MODEL_ID, "/tmp/tiny", 2, 2, 512, gpu_model="L20", api_token_env="LLMF_TOKEN"),
        engine="cpu",
    )
    sc.validate_serve_config(doc)
    app_ = doc["applications"][0]
    assert app_["import_path"] == "ray_cluster.engines.cpu:build_app"
    a = parse_args(app_["args"])  # the engine's own validator accepts every key
    assert (a.tensor_parallel_size, a.pipeline_parallel_size, a.gpu_model) == (2, 2, "L20")
    assert a.api_token_env == "LLMF_TOKEN" and a.model_id == MODEL_ID


# ---------------------------------------------------------------- the gated production app


def test_app_args_never_take_the_token_itself():
    with pytest.raises(ValueError, match="'api_token' is not allowed"):
        serve_app.parse_args({"api_token": "s3cret", "llm_configs": []})
    with pytest.raises(ValueError, match="'api_token_env'"):
        serve_app.parse_args({"llm_configs": []})
    env, rest = serve_app.parse_args(_llm_args())
    assert env == sc.DEFAULT_TOKEN_ENV and "api_token_env" not in rest and rest["llm_configs"]


def _llm_args() -> dict:
    return sc.render_serve_config(sc.ServeInputs("m", "/m", 1, 1, 256))["applications"][0]["args"]


def _gated_app(gate: serve_app.TokenGate):
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/v1/models")
    async def models():
        return {"data": [{"id": "m"}]}

    return serve_app.add_bearer_auth(api, gate)


def test_bearer_gate(monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("LLMF_TEST_TOKEN", "tok-123")
    client = TestClient(_gated_app(serve_app.TokenGate("LLMF_TEST_TOKEN")))
    assert client.get("/v1/models").status_code == 401
    bad = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    ok = client.get("/v1/models", headers={"Authorization": "Bearer tok-123"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "m"


def test_gate_fails_closed_and_never_pickles_the_token(monkeypatch):
    from ray_cluster.auth import TokenSourceError

    gate = serve_app.TokenGate("LLMF_TEST_TOKEN")
    monkeypatch.delenv("LLMF_TEST_TOKEN", raising=False)

    class Base:
        def __init__(self, *a, **kw):
            self.started = True

    ingress = serve_app.authed_ingress_class(Base, gate)
    with pytest.raises(TokenSourceError):
        ingress()  # a replica without a token does not start
    monkeypatch.setenv("LLMF_TEST_TOKEN", "tok-456")
    assert ingress().started and gate.allows("Bearer tok-456")
    assert b"tok-456" not in pickle.dumps(gate)


def test_build_app_when_ray_serve_llm_imports(monkeypatch):
    cls, why = sc.llm_config_validator()
    if cls is None:
        pytest.skip(f"ray.serve.llm not importable here: {why}")
    monkeypatch.setenv(sc.DEFAULT_TOKEN_ENV, "tok")
    assert serve_app.build_app(_llm_args()) is not None


def test_exported_schema_is_rays_own_and_well_formed():
    import json

    import jsonschema

    from ray_cluster.serve_config import SCHEMA_PATH, export_schema

    on_disk = json.loads(SCHEMA_PATH.read_text())
    # Regenerate with `python -m ray_cluster.serve_config --export-schema` after a Ray upgrade.
    assert on_disk == export_schema()
    jsonschema.Draft202012Validator.check_schema(on_disk)


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "onprem-l20"])
def test_program_side_check_agrees_with_ray_for_every_stack(stack):
    from ray.serve.schema import ServeDeploySchema

    from infra.offline import load_config
    from ray_cluster.serve_config import render_for_plan

    cfg = load_config(stack)
    doc = render_for_plan(cfg, cfg.plan())  # checked against the exported schema
    ServeDeploySchema.model_validate(doc)  # and by Ray's pydantic model itself


def test_exported_schema_rejects_a_bad_config_in_one_line():
    from infra.offline import load_config
    from ray_cluster.serve_config import ServeConfigError, render_for_plan, validate_with_exported_schema

    cfg = load_config("prod")
    doc = render_for_plan(cfg, cfg.plan())
    doc["applications"][0]["route_prefix"] = 5
    with pytest.raises(
        ServeConfigError,
        match=r"^Serve config rejected by Ray's ServeDeploySchema at "
        r"applications/0/route_prefix: ",
    ) as e:
        validate_with_exported_schema(doc)
    assert "\n" not in str(e.value)
