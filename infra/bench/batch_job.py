"""The batch job itself: offline inference over a JSONL / Parquet file with ray.data.llm (the vLLM
engine processor), writing Parquet results. Self-contained (Ray, pyarrow and the standard library
only), so `ray job submit --working-dir` can ship this one file to a cluster whose image has no
llmfleet operator code; `llmfleet batch --local` runs the same `run()` in-process.

Input rows: {"id": ..., "prompt": "..."} (an optional "max_tokens" per row). Output: a directory
of Parquet files (Ray Data's layout) with id, prompt, generated_text, generated_tokens, num_generated_tokens,
num_input_tokens, error, finished_at (epoch s) and engine_seconds (the request's time in the engine). Resumable: ids already in the output are skipped, and every run
adds its own files, so an interrupted job continues where it stopped.

Run: python batch_job.py --input IN --output OUT --model-source DIR --engine-kwargs JSON ...
The last stdout line is the summary as JSON.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import numbers
import os
import sys
import time
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import pyarrow as pa


def done_ids(output: str) -> set:
    """Ids already written to `output` (a local directory; remote outputs start fresh)."""
    import pyarrow.parquet as pq

    if "://" in output or not os.path.isdir(output):
        return set()
    ids: set = set()
    for f in glob.glob(os.path.join(output, "*.parquet")):
        t = pq.read_table(f, columns=["id", "error"])
        ids.update(
            i for i, e in zip(t.column("id").to_pylist(), t.column("error").to_pylist(), strict=True) if not e
        )
    return ids


def read_input(path: str):
    import ray.data

    if path.endswith((".jsonl", ".json")):
        return ray.data.read_json(path, lines=True) if path.endswith(".jsonl") else ray.data.read_json(path)
    if path.endswith(".parquet") or os.path.isdir(path):
        return ray.data.read_parquet(path)
    raise SystemExit(f"error: --input {path!r}: allowed: a .jsonl, .json or .parquet file")


def row_max_tokens(row: dict, default: int) -> int:
    """A row's own max_tokens, else the job's. A row without the key arrives as None or NaN:
    Ray Data fills a column that only some rows have (pandas/arrow), and int(NaN) raised
    "cannot convert float NaN to integer" for the whole job."""
    v = row.get("max_tokens")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return default
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 1 or not float(v).is_integer():
        raise ValueError(
            f"row id={row.get('id')!r}: max_tokens = {v!r}: allowed: a whole number >= 1, or no key"
        )
    return int(float(v))  # a whole number >= 1 (checked above)


def check_max_tokens(rows, default: int) -> None:
    """Every row's max_tokens before an engine starts: one line naming the first bad row."""
    for row in rows:
        try:
            row_max_tokens(row, default)
        except ValueError as e:
            raise SystemExit(f"error: --input: {e}") from None


def preprocess(max_tokens: int):
    """The engine request of one row: greedy, the row's max_tokens or the job's."""

    def pre(row: dict) -> dict:
        return {**row, "sampling_params": {"temperature": 0.0, "max_tokens": row_max_tokens(row, max_tokens)}}

    return pre


def generation_seconds(finished_at: list[float], engine_seconds: list[float]) -> float:
    """From the first request entering the engine to the last output: the window the output
    tokens were made in. The job's wall time also holds the engine's start-up (tens of seconds
    of model load before the first token), which is not a rate of the engine."""
    starts = [f - e for f, e in zip(finished_at, engine_seconds, strict=True) if f > 0 and e > 0]
    ends = [f for f in finished_at if f > 0]
    if not starts or not ends:
        return 0.0
    return max(0.0, max(ends) - min(starts))


def result_row(row: dict) -> dict:
    """One output row. ray.data.llm hands failed rows past the postprocess as they are, so this
    runs again over every row: one schema for the Parquet files (and the first pass's
    finished_at stays: it is when the engine's output reached the postprocess)."""
    return {
        "id": row["id"],
        "prompt": row.get("prompt") or "",
        "generated_text": row.get("generated_text") or "",
        # the token ids too: a token may decode to nothing (a special token is skipped in the text)
        "generated_tokens": [int(t) for t in (row.get("generated_tokens") or [])],
        "num_generated_tokens": int(row.get("num_generated_tokens") or 0),
        "num_input_tokens": int(row.get("num_input_tokens") or 0),
        "error": str(row.get("__inference_error__") or row.get("error") or ""),
        "finished_at": float(row.get("finished_at") or time.time()),
        # ray.data.llm's per-request engine time; -1 on a failed row
        "engine_seconds": max(0.0, float(row.get("engine_seconds") or row.get("time_taken_llm") or 0.0)),
    }


def build(model_source: str, engine_kwargs: dict, env: dict, bundles: list, strategy: str, batch_size: int,
          max_tokens: int):  # fmt: skip
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=model_source,
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": env},
        placement_group_config={"bundles": bundles, "strategy": strategy},
        concurrency=1,
        batch_size=batch_size,
        should_continue_on_error=True,  # a failed row is written with its error, not the job's end
        # Prompts go to the engine as text: vLLM tokenizes with the served tokenizer itself.
        chat_template_stage={"enabled": False},
        tokenize_stage={"enabled": False},
        detokenize_stage={"enabled": False},
    )

    return build_processor(config, preprocess=preprocess(max_tokens), postprocess=result_row)


def run(
    input_path: str,
    output: str,
    model_source: str,
    engine_kwargs: dict,
    env: dict,
    bundles: list,
    strategy: str = "PACK",
    batch_size: int = 16,
    max_tokens: int = 32,
) -> dict:
    t0 = time.monotonic()
    ds = read_input(input_path).materialize()  # read once: schema, count and the job share it
    schema = ds.schema()
    names = set(schema.names) if schema is not None else set()
    missing = {"id", "prompt"} - names
    if missing:
        raise SystemExit(
            f"error: --input {input_path!r}: rows lack {sorted(missing)}; allowed: rows with id and prompt"
        )
    total = ds.count()
    if "max_tokens" in names:  # a bad value fails here in one line, not inside the engine's actor
        check_max_tokens(ds.select_columns(["id", "max_tokens"]).iter_rows(), max_tokens)
    done = done_ids(output)
    todo = ds.filter(lambda r: r["id"] not in done).materialize() if done else ds
    new_rows = failed = tokens = 0
    finished: list[float] = []
    engine_s: list[float] = []
    if not done or todo.count():  # nothing left: no engine to start
        processor = build(model_source, engine_kwargs, env, bundles, strategy, batch_size, max_tokens)
        out = processor(todo).map(result_row).materialize()
        new_rows = out.count()
        if new_rows:
            out.write_parquet(output)
            # Streamed from the materialized blocks: no shuffle for these sums.
            cols = ["num_generated_tokens", "error", "finished_at", "engine_seconds"]
            for batch in out.select_columns(cols).iter_batches(batch_format="pyarrow"):
                b = cast("pa.Table", batch)  # Ray types every batch format as a dict of arrays
                tokens += sum(b.column("num_generated_tokens").to_pylist())
                failed += sum(1 for e in b.column("error").to_pylist() if e)
                finished += b.column("finished_at").to_pylist()
                engine_s += b.column("engine_seconds").to_pylist()
        # Drop every handle on the engine's actor pool: Ray then ends the MapWorker gracefully
        # (its __ray_shutdown__ shuts vLLM down, with its worker processes) instead of the
        # driver's ray.shutdown() killing it mid-engine (a traceback, orphaned VLLM::Worker).
        del processor, out
    wall = time.monotonic() - t0
    gen = generation_seconds(finished, engine_s)
    return {
        "input": input_path,
        "output": output,
        "rows": total,
        "skipped_done": len(done),
        "processed": new_rows,
        "failed": failed,
        "output_tokens": tokens,
        "seconds": round(wall, 1),
        "generation_seconds": round(gen, 3),
        # the engine's rate: tokens over the generation window, not over start-up + generation
        "output_tokens_per_s": round(tokens / gen, 2) if gen else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--model-source", required=True)
    ap.add_argument("--engine-kwargs", default="{}", help="JSON")
    ap.add_argument("--env", default="{}", help="JSON env vars of the engine")
    ap.add_argument("--bundles", default='[{"GPU": 1}]', help="JSON placement bundles of one engine")
    ap.add_argument("--strategy", default="PACK", help="placement strategy of one engine's bundles")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS") or "auto")  # inside `ray job submit`: the cluster
    summary = run(a.input, a.output, a.model_source, json.loads(a.engine_kwargs), json.loads(a.env),
                  json.loads(a.bundles), a.strategy, a.batch_size, a.max_tokens)  # fmt: skip
    sys.stdout.write(json.dumps(summary) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
