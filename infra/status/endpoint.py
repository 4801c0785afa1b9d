"""A deployed stack's endpoint: its URL and served model from the stack outputs, its bearer token
from SSM Parameter Store (SecureString; provider existing: the `api_token` secret output), and
one chat completion through it (the official openai client). The token is returned to the
caller, never logged: `llmfleet endpoint` prints it only with --show-token."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.local.chat import ChatError, chat_once
from infra.stack.outputs import StackOutputs
from infra.status.aws import aws_error


class EndpointError(RuntimeError):
    """One line: why the endpoint or its token cannot be used."""


def api_token(outputs: StackOutputs, ssm: Any | None) -> str:
    if outputs.provider == "existing":
        if not outputs.api_token or outputs.api_token == "[secret]":
            raise EndpointError(
                "stack output 'api_token' is hidden: read the outputs with secrets "
                "(`pulumi stack output --json --show-secrets`)"
            )
        return outputs.api_token
    if not outputs.token_parameter:
        raise EndpointError("stack output 'token_parameter' is missing: run `pulumi up` with this version")
    if ssm is None:
        raise EndpointError("reading the endpoint token needs an SSM client")
    try:
        return ssm.get_parameter(Name=outputs.token_parameter, WithDecryption=True)["Parameter"]["Value"]
    except (ClientError, BotoCoreError) as e:
        raise EndpointError(
            f"reading the endpoint token {outputs.token_parameter} from SSM: {aws_error(e)}"
        ) from None


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
