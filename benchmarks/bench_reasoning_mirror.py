"""Per-chunk cost of `reasoning_content` in the gated ingress's chat stream (issue #28, #29).

The ingress copies each delta's `reasoning` to `reasoning_content` as the chunk passes
(ray_cluster.serve_app.mirror_reasoning_sse: a substring test, and for a chunk with the key one
regex substitution on the text). This times it on vLLM's own chunks (ChatCompletionStreamResponse
serialized the way vLLM's chat server does) beside the obvious alternative, json.loads + edit +
json.dumps per chunk, and beside the stream's own per-token time for scale.

    .venv/bin/python benchmarks/bench_reasoning_mirror.py
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm.entrypoints.generate.base.protocol import DeltaMessage  # noqa: E402
from vllm.entrypoints.openai.chat_completion.protocol import (  # noqa: E402
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
)

from ray_cluster.serve_app import mirror_reasoning_sse  # noqa: E402


def chunk(**delta: str) -> str:
    c = ChatCompletionStreamResponse(
        id="chatcmpl-8f1c6e0a4b2d4e6f9a1b3c5d7e9f0a1b",
        created=1765065600,
        model="deepseek-ai/DeepSeek-R1",
        choices=[ChatCompletionResponseStreamChoice(index=0, delta=DeltaMessage(**delta))],
    )
    return f"data: {c.model_dump_json(exclude_unset=True)}\n\n"


def via_json(packet: str) -> str:
    out = []
    for event in packet.split("\n\n"):
        if event.startswith("data: {"):
            doc = json.loads(event[6:])
            for ch in doc.get("choices", []):
                d = ch.get("delta") or {}
                if "reasoning" in d:
                    d["reasoning_content"] = d["reasoning"]
            event = "data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        if event:
            out.append(event + "\n\n")
    return "".join(out)


def per_call_us(fn, arg, n: int = 200_000) -> float:
    best = min(timeit.repeat(lambda: fn(arg), number=n, repeat=5))
    return best / n * 1e6


def main() -> None:
    cases = {
        "reasoning token (thinking phase)": chunk(reasoning=" the"),
        "content token (answer phase)": chunk(content=" the"),
        "reasoning, 16 events batched": "".join(chunk(reasoning=f" w{i}") for i in range(16)),
    }
    for name, packet in cases.items():
        assert json.loads(mirror_reasoning_sse(packet).split("\n\n")[0][6:]) == json.loads(
            via_json(packet).split("\n\n")[0][6:]
        )
        mirror = per_call_us(mirror_reasoning_sse, packet)
        parsed = per_call_us(via_json, packet, 50_000)
        print(f"{name:34s} {len(packet):5d} B   mirror {mirror:6.2f} us   json round-trip {parsed:6.2f} us")


if __name__ == "__main__":
    main()
