"""A JSON HTTP server on 127.0.0.1 for tests that stand in for an endpoint the CLI calls (the
stack's OpenAI endpoint behind the NLB, AMP's query API): every request recorded, each answered
by the test's function (a JSON document, or bytes sent as they are). The server, its thread and its socket end with `close()` (or `with`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: Message  # case-insensitive .get(), as the handler saw them
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class JsonServer:
    def __init__(self, answer: Callable[[Request], tuple[int, Any]]):
        self.requests: list[Request] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, self.headers, self.rfile.read(n) if n else b"")
                outer.requests.append(req)
                code, doc = answer(req)
                # bytes go out as they are: a text endpoint (Ray's /api/healthz) answers plain text
                raw = isinstance(doc, bytes)
                body = doc if raw else json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if raw else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> JsonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chat_completion(model: str, content: str, prompt_tokens: int = 5, completion_tokens: int = 4) -> dict:
    """An OpenAI chat.completion document, as the Serve app's ingress answers."""
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }  # fmt: skip
