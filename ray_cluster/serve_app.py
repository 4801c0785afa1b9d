"""The production Serve application: Ray Serve LLM's OpenAI app behind a bearer token.

`import_path: ray_cluster.serve_app:build_app`, args = `ray.serve.llm.LLMServingArgs` plus
`api_token_env`, the NAME of the env var that holds the token on the head (the hosts' env file,
filled from SSM at boot). The token value never appears in a config, in the app graph or in
Ray's GCS: each ingress replica reads it from its own environment when it starts, and a replica
without a token fails to start instead of serving unauthenticated.

It builds what `ray.serve.llm:build_openai_app` builds (one LLMServer deployment per model and
the OpenAiIngress in front), on a FastAPI app made by Ray Serve LLM's own `init()` with one more
middleware: the bearer check of ray_cluster.auth (constant time). Ray Serve's own
`/-/healthz` and `/-/routes` are answered by the proxy, so load balancer checks need no token.

ray.serve.llm needs an engine package (vLLM) to import, so every ray.serve.llm import is inside
a function: this module imports anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ray_cluster.auth import bearer_ok, load_token

_OPENAI_401 = {
    "error": {
        "message": "Missing or invalid bearer token.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


class AppArgs(BaseModel):
    """Our keys; everything else is LLMServingArgs and is validated by Ray Serve LLM."""

    model_config = ConfigDict(extra="allow")

    api_token_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_args(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(token env name, LLMServingArgs dict); one-line ValueError naming the bad key."""
    args = dict(args or {})
    if "api_token" in args:
        raise ValueError(
            "build_app args: key 'api_token' is not allowed; put the token in an env var and pass api_token_env"
        )
    try:
        a = AppArgs.model_validate(args)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"build_app args: key {key!r}: {err['msg']}") from None
    serving = {k: v for k, v in args.items() if k != "api_token_env"}
    return a.api_token_env, serving


class TokenGate:
    """Holds the env var NAME; the value is read in the replica process, once."""

    def __init__(self, env_name: str):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env_name):
            raise ValueError(f"api_token_env = {env_name!r}: allowed: an environment variable name")
        self.env_name = env_name
        self._token: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"env_name": self.env_name, "_token": None}  # never ship a token in a pickle

    def token(self) -> str:
        if self._token is None:
            self._token = load_token(self.env_name)  # TokenSourceError when unset: fail closed
        return self._token

    def allows(self, authorization: str | None) -> bool:
        return bearer_ok(authorization, self.token())


def add_bearer_auth(app: Any, gate: TokenGate) -> Any:
    """Add the bearer check as the outermost middleware of a FastAPI/Starlette app."""
    from starlette.responses import JSONResponse

    @app.middleware("http")
    async def _bearer(request, call_next):
        if not gate.allows(request.headers.get("authorization")):
            return JSONResponse(_OPENAI_401, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    return app


def authed_ingress_class(base: type, gate: TokenGate) -> type:
    """A subclass of the ingress whose replicas refuse to start without a token."""

    class AuthedOpenAiIngress(base):
        def __init__(self, *args: Any, **kwargs: Any):
            gate.token()
            super().__init__(*args, **kwargs)

    AuthedOpenAiIngress.__name__ = AuthedOpenAiIngress.__qualname__ = base.__name__
    return AuthedOpenAiIngress


def build_app(args: dict[str, Any]):
    """Serve application builder: Ray Serve LLM's OpenAI app with a bearer-token gate."""
    from ray import serve
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init
    from ray.serve.llm import LLMServingArgs, build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    env_name, serving = parse_args(args)
    cfg = LLMServingArgs.model_validate(serving)
    if cfg.ingress_cls_config.ingress_cls is not OpenAiIngress:
        raise ValueError("build_app args: ingress_cls_config is not supported; the gated ingress is fixed")
    gate = TokenGate(env_name)
    llm_configs = cfg.llm_configs
    deployments = {c.model_id: build_llm_deployment(c) for c in llm_configs}
    cards = {c.model_id: to_model_metadata(c.model_id, c) for c in llm_configs}
    lora_paths = {
        c.model_id: c.lora_config.dynamic_lora_loading_path for c in llm_configs if c.lora_config is not None
    }
    options = maybe_apply_llm_deployment_config_defaults(
        OpenAiIngress.get_deployment_options(llm_configs), cfg.ingress_deployment_config
    )
    ingress = make_fastapi_ingress(
        authed_ingress_class(OpenAiIngress, gate), app=add_bearer_auth(init(), gate)
    )
    return serve.deployment(ingress, **options).bind(
        llm_deployments=deployments,
        model_cards=cards,
        lora_paths=lora_paths,
        **cfg.ingress_cls_config.ingress_extra_kwargs,
    )
