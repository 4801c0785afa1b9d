"""OpenAI protocol pieces: request models (pydantic), response/chunk builders, error bodies.

Only what the CPU engine serves, shaped like vLLM's OpenAI server so clients see one API in
local runs and in production. Unknown request fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stop: str | list[str] | None = Field(default=None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM extension

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"n={v} is not supported; only n=1 is allowed")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, gt=0)

    def chat_messages(self) -> list[dict[str, str]]:
        # The template knows system/user/assistant; developer is OpenAI's new name for system.
        role = {"developer": "system", "tool": "user"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingParams):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = Field(default=16, gt=0)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[int] | list[str]) -> str | list[int]:
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("only one prompt per request is supported")
            return v[0]
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


# ---- errors -----------------------------------------------------------------------------------


class OpenAIError(Exception):
    """Raised by handlers; rendered as {"error": {...}} with the status code."""

    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def unauthorized() -> OpenAIError:
    return OpenAIError(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <token>'.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def model_not_found(model: str, served: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model {model!r} does not exist; this server serves {served!r}.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def from_validation_errors(errors: list[dict[str, Any]]) -> OpenAIError:
    """Reshape pydantic/FastAPI validation errors (422) into one OpenAI 400."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return bad_request(f"Request body is not valid JSON: {first.get('msg')}", None, "invalid_json")
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    where = f"field {param!r}: " if param else ""
    return bad_request(
        f"{where}{msg}", param, "invalid_value" if first.get("type") != "missing" else "missing_field"
    )


def parse(model_cls: type[BaseModel], raw: bytes) -> Any:
    """JSON bytes -> request model, or OpenAIError(400)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"Request body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object", None, "invalid_json")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from None


# ---- responses ----------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def models_list(model_id: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "llmfleet",
                "max_model_len": max_model_len,
            }
        ],
    }


def chat_completion(rid: str, model: str, text: str, finish: str, u: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": u,
    }


def chat_chunk(
    rid: str, model: str, delta: dict[str, Any] | None, finish: str | None, u=None, with_usage=False
):
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    if with_usage:
        chunk["usage"] = u
    return chunk


def completion(rid: str, model: str, text: str, finish: str, u: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": u,
    }


def completion_chunk(rid: str, model: str, text: str | None, finish: str | None, u=None, with_usage=False):
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if text is None
        else [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }
    if with_usage:
        chunk["usage"] = u
    return chunk


def sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
