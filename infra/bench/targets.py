"""Where `llmfleet bench` / `batch` send their work: the local cluster, a stack, or an endpoint.

- local: the state of `llmfleet local up` (endpoint, token file, served model, its model dir
  (the served tokenizer) and the head's dashboard);
- stack: endpoint URL and served model from the stack outputs (`--outputs FILE`, the JSON of
  `pulumi stack output --json`, or the Automation API), the token from SSM (SecureString named by
  the `token_parameter` output); the endpoint is the stack's internal NLB, so `--endpoint` may
  name a tunnel to it instead;
- endpoint: a URL and the name of the env var that holds its token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from infra.bench.sweep import BenchError, Target
from infra.local.layout import LocalError
from infra.local.state import load_state, read_token, state_dir


@dataclass(frozen=True)
class Resolved:
    target: Target
    tokenizer: str | None  # a local directory with the served tokenizer
    dashboard: str | None  # the Ray dashboard (Serve REST API, Jobs API), when known
    model_dir: str | None = None  # the weights on the cluster's hosts


def local_target(name: str) -> Resolved:

    try:
        st = load_state(name)
        if st is None:
            raise BenchError(
                f"--local: no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`"
            )
        token = read_token(st)
    except LocalError as e:
        raise BenchError(str(e)) from None
    head = st.hosts[0].ip
    return Resolved(
        target=Target(st.endpoint, token, st.model, f"local:{name}"),
        tokenizer=st.model_dir,
        dashboard=f"http://{head}:{st.ports.dashboard}",
        model_dir=st.model_dir,
    )


def _stack_outputs(stack: str, outputs_file: Path | None) -> dict:
    if outputs_file is not None:
        try:
            return json.loads(outputs_file.read_text())
        except (OSError, ValueError) as e:
            raise BenchError(
                f"--outputs {str(outputs_file)!r}: {e}; allowed: `pulumi stack output --json`"
            ) from None
    # start-up: the Automation API and botocore, only for a stack target (not local or a URL)
    from infra.deploy import DeployError, build_stack_args, open_stack, require_pulumi_cli

    try:
        require_pulumi_cli()
        st = open_stack(build_stack_args(stack, env=os.environ), create=False)
        return {k: v.value for k, v in st.outputs().items()}
    except DeployError as e:
        raise BenchError(f"{e}; or pass --outputs FILE (`pulumi stack output --json`)") from None


def _ssm_token(outputs: dict) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    name = outputs.get("token_parameter")
    if not name:
        raise BenchError(
            "stack output 'token_parameter' is missing; pass --endpoint URL --token-env VAR instead"
        )
    try:
        ssm = boto3.Session().client("ssm", region_name=outputs.get("region"))
        return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except (BotoCoreError, ClientError) as e:
        raise BenchError(f"SSM parameter {name!r}: {str(e).splitlines()[0]}") from None


def stack_target(
    stack: str, outputs_file: Path | None, endpoint: str | None, token_env: str | None, tokenizer: str | None
) -> Resolved:
    outputs = _stack_outputs(stack, outputs_file)
    url = endpoint or outputs.get("endpoint_url")
    if not url:
        raise BenchError("stack output 'endpoint_url' is missing; pass --endpoint URL")
    token = _env_token(token_env) if token_env else _ssm_token(outputs)
    model = outputs.get("served_model") or outputs.get("model")
    if not model:
        raise BenchError("stack output 'served_model' is missing")
    return Resolved(
        Target(_v1(url), token, str(model), f"stack:{stack}"), tokenizer, None, outputs.get("model_path")
    )


def _env_token(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        raise BenchError(
            f"--token-env: {var!r} is not set or empty; allowed: the name of an env var holding the token"
        )
    return value


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def endpoint_target(url: str, token_env: str | None, model: str | None, tokenizer: str | None) -> Resolved:
    import httpx

    if not url.startswith(("http://", "https://")):
        raise BenchError(f"--endpoint: {url!r} is not allowed; allowed: an http(s) URL of the OpenAI API")
    token = _env_token(token_env) if token_env else ""
    base = _v1(url)
    if not model:
        try:
            r = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {token}"}, timeout=15)
            ids = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError):
            ids = []
        if not ids:
            raise BenchError(f"--endpoint: {base}/models named no model; pass --model")
        model = str(ids[0])
    return Resolved(Target(base, token, model, "endpoint"), tokenizer, None)
