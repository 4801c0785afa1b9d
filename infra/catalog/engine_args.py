"""vLLM's engine arguments as data: every field of the pinned vLLM's `EngineArgs`, its type, and
a JSON schema of its values where the type is a plain one (numbers, strings, booleans, literals
and lists or maps of them).

`llmfleet:engineArgs` is checked against this file when a stack config loads: importing vLLM
costs ~15 s on this machine class, and `llmfleet cost`, `plan` and `preview` must start in a
fraction of that. The file is generated from the installed vLLM (like SkyPilot's generated
catalogs) and a test keeps it equal to what that vLLM says; regenerate after a vLLM upgrade:

    python -m infra.catalog.engine_args --export

Fields whose type is one of vLLM's own config classes (compilation_config, ...) carry no schema
here: the final render builds vLLM's `EngineArgs` from the engine kwargs, which validates them
(infra.rayconf.serve_config.validate_engine_kwargs).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PATH = Path(__file__).parent / "vllm_engine_args.json"


@cache
def _catalog() -> dict[str, Any]:
    return json.loads(PATH.read_text())


def engine_args() -> dict[str, dict[str, Any]]:
    """name -> {"type": the annotation as vLLM writes it, "schema": JSON schema or None}."""
    return _catalog()["fields"]


def vllm_version() -> str:
    return _catalog()["vllm"]


def _plain(schema: dict[str, Any]) -> bool:
    """A schema that stands alone: no references into vLLM's own config classes."""
    return "$ref" not in json.dumps(schema) and "$defs" not in schema


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def export() -> dict[str, Any]:
    """The catalog from the installed vLLM (imports vLLM: seconds)."""
    import dataclasses
    import sys

    import vllm
    from pydantic import TypeAdapter
    from pydantic.errors import PydanticSchemaGenerationError
    from vllm.engine.arg_utils import EngineArgs

    namespace = vars(sys.modules[EngineArgs.__module__])
    fields: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(EngineArgs):
        annotation: Any = f.type
        schema: dict[str, Any] | None = None
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # noqa: S307 - vLLM's own annotation text
            except NameError:
                pass  # a name vLLM imports only for type checking: no schema here, vLLM checks it
        if not isinstance(annotation, str):
            try:
                candidate = TypeAdapter(annotation).json_schema()
            except PydanticSchemaGenerationError:
                candidate = None  # e.g. torch.dtype
            if candidate is not None and _plain(candidate):
                schema = candidate
        fields[f.name] = {"type": _type_text(annotation), "schema": schema}
    return {
        "$comment": "dataclasses.fields(vllm.engine.arg_utils.EngineArgs) with JSON schemas from "
        "pydantic; regenerate: python -m infra.catalog.engine_args --export",
        "vllm": vllm.__version__,
        "fields": fields,
    }


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--export"]:
        PATH.write_text(json.dumps(export(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {PATH}")
    else:
        sys.exit("usage: python -m infra.catalog.engine_args --export")
