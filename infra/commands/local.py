"""`llmfleet local up|status|down|chat|sleep|wake`: the production cluster shape on this machine (infra.local.cluster)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.commands._common import (
    JsonOpt,
    complete_stack,
    console,
    err_console,
    fail,
    print_json,
    require_local_engine,
)
from infra.commands._fit import Col, fitted_table
from infra.commands._local_live import top
from infra.commands._status_view import render
from infra.local.chat import chat
from infra.local.cluster import FAILED_STAGE, STAGES, UpOptions, down, up
from infra.local.hosts import HostsError
from infra.local.layout import ROUTINGS, LocalError
from infra.local.sleep import sleep, wake
from infra.local.state import load_state, public_doc, state_dir
from infra.local.tiny_model import MODEL_ID as TINY_MODEL_ID
from infra.local.tiny_model import TINY_MODEL_IDS, is_tiny_model_id
from infra.rayconf.serve_config import ServeConfigError
from infra.stack.config import ConfigError
from infra.stack.engine_options import ENGINE_KEY, SERVE_KEY
from infra.stack.files import parse_override
from infra.stack.lora import ADAPTER_NAME_ALLOWED, ADAPTER_NAME_RE
from infra.status.local import local_status
from infra.status.model import StatusError

NameOpt = Annotated[
    str, typer.Option("--name", help="Cluster name (namespaces llmf-<NAME>-h<i>, state <NAME>.json).")
]

PriceStackOpt = Annotated[
    str,
    typer.Option(
        "--price-stack",
        autocompletion=complete_stack,
        help="Stack whose workers price the measured tokens/s (beside its planner estimate).",
    ),
]

UP_HELP = (
    "Start a local multi-host Ray cluster and serve the tiny DeepSeek-V3 model on it.\n\n"
    "Layout (the production shape): host 0 is the head (0 GPUs; Serve controller, HTTP proxy, "
    "OpenAI ingress); hosts 1..N-1 are CPU workers, one replica of the production app each "
    "(ray_cluster.serve_app:build_app, Ray Serve LLM with vLLM's CPU build). A replica's TP x PP "
    "ranks stay on its host (vLLM's Ray executor refuses CPU); the preflight gangs ranks across every "
    "worker host and all-reduces over them. Each host's node runs under a supervisor that restarts it "
    "when it dies (like the production unit's restart policy), so a lost worker rejoins and its "
    "replica serves again while the others keep answering.\n\n"
    "Hosts are network namespaces with their own IPs when run as root, else loopback addresses. The "
    "deploy is the production flow (ray_cluster.node deploy): wait for GPUs, preflight, serve deploy, "
    "ready only after a real completion. State: $LLMFLEET_STATE_DIR or ~/.cache/llmfleet/local. "
    "Running up again on a healthy cluster prints it again."
)


def _progress_stages():
    """A rich progress display of the `up` stages on stderr; returns (progress, on_stage)."""

    labels = dict(STAGES)
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    order = [k for k, _ in STAGES]

    def on_stage(stage: str, detail: str) -> None:
        if stage == FAILED_STAGE:
            # the stage in flight stops with a red mark, not a spinner frozen beside its goal
            by_id = {t.id: t for t in progress.tasks}
            for key, task in tasks.items():
                if not by_id[task].finished:
                    progress.update(task, description=f"{labels[key]} [red]✗ failed[/]")
                    progress.stop_task(task)
            return
        # A stage starting means every earlier one is done.
        upto = order.index(stage) if stage in order else len(order)
        for key in order[:upto]:
            if key not in tasks:
                tasks[key] = progress.add_task(labels[key], total=1)
            progress.update(tasks[key], completed=1)
        if stage in tasks and detail:
            progress.update(tasks[stage], description=f"{labels[stage]} [dim]({detail})[/]")
        elif stage in labels and stage not in tasks:
            text = labels[stage] + (f" [dim]({detail})[/]" if detail else "")
            tasks[stage] = progress.add_task(text, total=1)

    return progress, on_stage


def printable(text: str) -> tuple[str, list[str]]:
    """`text` safe for a terminal: every non-printable character (BEL, NUL, DEL, escape
    sequences' ESC, ...) shown as its Python escape (\\x07), newlines and tabs kept. Also the
    escapes, in order of first appearance, so the caller can say which were escaped."""
    out: list[str] = []
    seen: dict[str, None] = {}
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        else:
            esc = ascii(ch)[1:-1]  # '\x07', '\x00', '\x7f', '\u200b'
            seen.setdefault(esc)
            out.append(esc)
    return "".join(out), list(seen)


def _hosts_table(rows: list[dict], title: str) -> Table:

    with_status = any("status" in h for h in rows)
    cols = [Col(c, whole=True) for c in ("host", "ip", "role", "engine ranks")] + (
        [Col("status")] if with_status else []
    )
    table = []
    for h in rows:
        cells = [h["name"], h["ip"], h["role"], str(h["ranks"])]
        if with_status:
            shown = {"alive": "[green]alive[/]", "lost": "[red]lost[/]"}.get(str(h.get("status")), "-")
            if h.get("status") == "lost" and h.get("reason"):
                shown += f" [dim]({h['reason']})[/]"
            cells.append(shown)
        table.append(cells)
    return fitted_table(console, cols, table, title=title)


# Local only: the engine replica's own vLLM app, gated in the replica, is the HTTP ingress
# (ray_cluster.serve_app, direct streaming); not a stack key (infra/rayconf/serve_config.py says why).
DIRECT_KEY = "llmfleet:directStreaming"


def _serving_options(items: list[str]) -> dict[str, Any]:
    """`-c KEY=JSON` of local up: the two serving maps and directStreaming (the rest of a stack
    has no local meaning)."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError as e:
            fail(str(e))
        if key not in (ENGINE_KEY, SERVE_KEY, DIRECT_KEY):
            fail(f"-c {key}: allowed with local up: {ENGINE_KEY}, {SERVE_KEY}, {DIRECT_KEY}")
        allowed = "true or false" if key == DIRECT_KEY else "a JSON mapping"
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            fail(f"{key} = {value!r}: not valid JSON; allowed: {allowed}")
        if not isinstance(parsed, bool if key == DIRECT_KEY else dict):
            fail(f"{key} = {value}: allowed: {allowed}")
        out[key] = parsed
    return out


def up_cmd(
    hosts: Annotated[
        int, typer.Option("--hosts", min=2, max=8, help="Hosts: 1 head + N-1 workers, one replica each.")
    ] = 2,
    tp: Annotated[
        int,
        typer.Option(
            "--tp", "--tensor-parallel-size", min=1, max=4, help="Tensor parallel ranks per replica."
        ),
    ] = 1,
    pp: Annotated[
        int,
        typer.Option("--pp", "--pipeline-parallel-size", min=1, max=4, help="Pipeline stages per replica."),
    ] = 1,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Endpoint port on the head's IP.")
    ] = 8000,
    mode: Annotated[str, typer.Option("--mode", help="auto (netns when root), netns or loopback.")] = "auto",
    name: NameOpt = "local",
    subnet: Annotated[
        int, typer.Option("--subnet", min=0, max=255, help="Third octet of the hosts' subnet.")
    ] = 1,
    timeout: Annotated[float, typer.Option("--timeout", min=10, help="Seconds per wait.")] = 600.0,
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            help="Run each host's node in this node image (REF from `make image`), with the "
            "production docker run options and entrypoint; loopback hosts. Default: the venv.",
        ),
    ] = None,
    gcs_redis: Annotated[
        bool,
        typer.Option(
            "--gcs-redis",
            help="Ray GCS fault tolerance on a local redis-server (Debian's): the head restarts "
            "into the same cluster state. Not with --image.",
        ),
    ] = False,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="KEY=JSON",
            help="llmfleet:engineArgs=JSON or llmfleet:serveOptions=JSON, as on a stack, or "
            "llmfleet:directStreaming=true (the engine's own app is the gated ingress) (repeatable).",
        ),
    ] = None,
    routing: Annotated[
        str,
        typer.Option(
            "--routing",
            help="How Serve picks a replica: pow2, or prefix (Ray Serve LLM's prefix-cache "
            "affinity, as llmfleet:routing; needs --hosts 3 or more).",
        ),
    ] = "pow2",
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="The tiny model the replicas serve: llmfleet/tiny-deepseek-v3 (R1's architecture, "
            "MLA) or llmfleet/tiny-llama (no MLA: vLLM's CPU build caches prefixes for it).",
        ),
    ] = TINY_MODEL_ID,
    train_hosts: Annotated[
        int,
        typer.Option(
            "--train-hosts",
            min=0,
            max=6,
            help="The last N worker hosts train (`llmfleet finetune --local`) instead of serving.",
        ),
    ] = 0,
    lora: Annotated[
        bool,
        typer.Option("--lora", help="Serve LoRA adapters (<model>:NAME) from the cluster's adapters store."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    # a value outside the choices is a usage error (exit 2, as click's), before any engine check
    if routing not in ROUTINGS:
        fail(f"--routing {routing!r}: allowed: {', '.join(ROUTINGS)}")
    if model not in TINY_MODEL_IDS:
        fail(f"--model {model!r}: allowed: {', '.join(TINY_MODEL_IDS)}")
    require_local_engine()

    if gcs_redis and image:
        fail("--gcs-redis: allowed only without --image (the image mode has no redis-server)")
    options = _serving_options(config or [])
    opts = UpOptions(hosts, tp, pp, port, mode, name, subnet, timeout, image=image, gcs_redis=gcs_redis,
                     engine_args=options.get("llmfleet:engineArgs", {}),
                     serve_options=options.get("llmfleet:serveOptions", {}), routing=routing,
                     model=model, train_hosts=train_hosts, lora=lora,
                     direct_streaming=options.get(DIRECT_KEY, False))  # fmt: skip
    progress, on_stage = _progress_stages()
    try:
        with progress:
            st = up(opts, on_stage)
    except (LocalError, HostsError, ServeConfigError) as e:
        fail(str(e), code=1)
    except KeyboardInterrupt:
        fail("interrupted; everything started was stopped", code=130)
    doc = public_doc(st)
    if as_json:
        print_json(doc)
        return
    if st.reused:
        console.print(f"local cluster {name!r} is already up and serving", highlight=False)
    console.print(_hosts_table([h.model_dump() for h in st.hosts], f"local cluster {name!r} ({st.mode})"))
    lay = st.layout
    console.print(
        f"engine: {st.engine}: {st.model}, {lay.replicas} replica(s) x TP {lay.tp} x PP {lay.pp}",
        highlight=False,
    )
    console.print(f"endpoint: {doc['endpoint']}", highlight=False)
    console.print(f"token:    {doc['token']}", highlight=False)
    prom = st.prometheus
    metrics = (
        f"{prom.url} (Prometheus; llmfleet local top)"
        if prom and prom.url
        else (prom and prom.missing) or "-"
    )
    console.print(f"metrics:  {metrics}", highlight=False)
    console.print(
        "try:      llmfleet local chat 'Hello'   |   llmfleet local down",
        highlight=False,
    )


def status_cmd(
    name: NameOpt = "local",
    price_stack: PriceStackOpt = "prod",
    as_json: JsonOpt = False,
) -> None:
    """Each host alive/lost (its raylet and Ray's node table), Ray's nodes, the Serve app's replicas and their nodes, a real completion, and live figures from the cluster's Prometheus: the model and tables `llmfleet status` shows for a deployed stack."""  # noqa: E501

    try:
        rep = local_status(name, price_stack=price_stack)
    except (LocalError, ConfigError, StatusError) as e:
        fail(str(e), code=1)
    if as_json:
        print_json(rep.to_json())
        return

    render(rep, console)


def top_cmd(
    name: NameOpt = "local",
    interval: Annotated[float, typer.Option("--interval", min=0.5, help="Seconds between refreshes.")] = 2.0,
    iterations: Annotated[
        int, typer.Option("--iterations", min=0, help="Refreshes before exiting; 0 = until Ctrl-C.")
    ] = 0,
) -> None:
    """Live serving figures (Prometheus queries), refreshed in place: requests running and waiting, tokens/s, TTFT and TPOT p50, KV-cache usage, per worker host."""

    try:
        st = load_state(name)
    except LocalError as e:
        fail(str(e), code=1)
    if st is None:
        fail(f"no local cluster {name!r} in {state_dir()}; start one with `llmfleet local up`", code=1)
    prom = st.prometheus
    if prom is None or not prom.url:
        why = (prom and prom.missing) or "run `llmfleet local down` and `up` again"
        fail(f"local cluster {name!r} runs no Prometheus: {why}", code=1)
    try:
        top(st, prom.url, interval, iterations)
    except KeyboardInterrupt:
        pass


def down_cmd(name: NameOpt = "local", as_json: JsonOpt = False) -> None:
    """Stop supervisors and every Ray process of the hosts, delete namespaces, state and token."""

    removed = down(name)
    if as_json:
        print_json({"name": name, "removed": removed})
    elif removed:
        console.print(f"local cluster {name!r} is down; removed {len(removed)} items", highlight=False)
    else:
        console.print(f"no local cluster {name!r} running; nothing to do", highlight=False)


def print_reply(r: dict) -> None:
    """A chat reply for people: the thought (dim, when the model has a reasoning parser), then the
    answer; non-printable characters escaped and named."""
    console.print(f"[bold]assistant[/] ({r['model']}):", highlight=False)
    reasoning = r.get("reasoning") or ""
    if reasoning:
        thought, _ = printable(reasoning)
        console.print(f"[dim]<think>{escape(thought)}</think>[/]", highlight=False, soft_wrap=True)
    shown, escaped = printable(r["reply"])
    if not shown:
        what = "no answer after the reasoning" if reasoning else "empty reply"
        shown = f"({what}, finish_reason={r['finish_reason']})"
    console.print(shown, highlight=False, markup=False)
    if escaped:
        err_console.print(
            f"note: the reply held non-printable characters, shown escaped: {' '.join(escaped)}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


ThinkingBudgetOpt = Annotated[
    int | None,
    typer.Option(
        "--thinking-budget",
        min=0,
        help="Most tokens the model may think before vLLM closes the thought (</think>); "
        "the rest of the reply is the answer. Default: no limit.",
    ),
]


def sleep_cmd(name: NameOpt = "local", as_json: JsonOpt = False) -> None:
    """Stop the worker hosts (the head, the endpoint and its gate stay): requests get 503 + Retry-After."""

    try:
        r = sleep(name)
    except LocalError as e:
        fail(str(e), code=1)
    if as_json:
        print_json(r)
        return
    console.print(
        f"local cluster {name!r} is asleep: stopped {', '.join(r['stopped']) or 'no worker host'}; "
        "the head answers 503 until `llmfleet local wake`",
        highlight=False,
    )


def wake_cmd(
    name: NameOpt = "local",
    timeout: Annotated[
        float, typer.Option("--timeout", min=10, help="Seconds to wait for a real completion.")
    ] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Start the worker hosts again and wait until a real completion answers (Serve re-places the replicas)."""

    try:
        r = wake(name, timeout, on_stage=lambda s: err_console.print(s, highlight=False))
    except LocalError as e:
        fail(str(e), code=1)
    if as_json:
        print_json(r)
        return
    console.print(f"local cluster {name!r} is serving again after {r['seconds']:g} s", highlight=False)


def chat_cmd(
    message: Annotated[str, typer.Argument(help="The user message.")],
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, max=1000, help="Most tokens the reply may have.")
    ] = 48,
    temperature: Annotated[
        float,
        typer.Option("--temperature", min=0.0, max=2.0, help="Sampling temperature (0 = greedy)."),
    ] = 0.7,
    thinking_budget: ThinkingBudgetOpt = None,
    name: NameOpt = "local",
    adapter: Annotated[
        str | None,
        typer.Option("--adapter", help="A LoRA adapter (llmfleet finetune --name): asks <model>:NAME."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the local endpoint one question (openai client) and print the assistant's reply."""

    if adapter is not None and not ADAPTER_NAME_RE.fullmatch(adapter):
        fail(f"--adapter {adapter!r}: allowed: {ADAPTER_NAME_ALLOWED}")
    try:
        r = chat(message, name, max_tokens, temperature, thinking_budget, adapter)
    except LocalError as e:
        fail(str(e), code=1)
    if as_json:
        print_json(r)
        return
    print_reply(r)
    if is_tiny_model_id(r["model"].split(":")[0]):
        err_console.print(
            "[dim]note: the tiny model has random weights; the text proves the serving path, not sense[/]",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    local = typer.Typer(
        name="local",
        help="A multi-host Ray cluster on this machine serving a tiny DeepSeek-V3 model (OpenAI API).",
        no_args_is_help=True,
    )
    local.command("up", help=UP_HELP)(up_cmd)
    local.command("status")(status_cmd)
    local.command("top")(top_cmd)
    local.command("down")(down_cmd)
    local.command("chat")(chat_cmd)
    local.command("sleep")(sleep_cmd)
    local.command("wake")(wake_cmd)
    app.add_typer(local, name="local")
