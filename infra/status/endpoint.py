"""A deployed stack's endpoint: its URL and served model from the stack outputs, its bearer token
from SSM Parameter Store (SecureString; provider existing: the `api_token` secret output), and
one chat completion through it (the official openai client). The token is returned to the
caller, never logged: `llmfleet endpoint` prints it only with --show-token."""

from __future__ import annotations

from typing import Any

from infra.local.chat import ChatError, chat_once
from infra.stack.outputs import StackOutputs
from infra.status.aws import stack_secret


class EndpointError(RuntimeError):
    """One line: why the endpoint or its token cannot be used."""


def api_token(outputs: StackOutputs, ssm: Any | None) -> str:
    return stack_secret(
        outputs,
        ssm,
        output="api_token",
        parameter="token_parameter",
        what="endpoint token",
        show_secrets="`pulumi stack output --json --show-secrets`",
        error=EndpointError,
    )


def chat(
    outputs: StackOutputs,
    token: str,
    message: str,
    max_tokens: int = 48,
    temperature: float = 0.7,
    thinking_budget: int | None = None,
) -> dict:
    try:
        return chat_once(
            outputs.endpoint_url,
            token,
            outputs.served_model,
            message,
            max_tokens,
            temperature,
            thinking_budget,
        )
    except ChatError as e:
        raise EndpointError(f"{e}; see `llmfleet status`") from None
