"""The one renderer of ClusterStatus (infra/status/model.py): `llmfleet status` (a deployed stack)
and `llmfleet local status` print the same tables from the same model."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra.commands import _common
from infra.commands._fit import Col, fitted_table
from infra.commands._local_live import cost_table, figures_table
from infra.status.model import ClusterStatus, replicas_by_node

_STATE = {"alive": "[green]alive[/]", "lost": "[red]lost[/]", "asleep": "[blue]asleep[/]"}
_POWER = {"serving": "[green]serving[/]", "waking": "[yellow]waking[/]", "asleep": "[blue]asleep[/]"}
_GOOD = {"RUNNING", "HEALTHY"}


def _state(text: str) -> str:
    return (
        f"[green]{text}[/]"
        if text in _GOOD
        else f"[yellow]{text}[/]"
        if text.endswith("ING")
        else f"[red]{text}[/]"
    )


def hosts_table(s: ClusterStatus, console: Console | None = None) -> Table:
    """Groups, instance ids, IPs and host names whole, and the status always; where they do not
    all fit, health, lifecycle, role, the IP and the host's name (its group says it) make room, in
    that order (--json has them)."""

    aws = s.target == "aws"
    cols = [
        Col("host", whole=True, drop=1 if aws else 0),  # the group names the host too
        Col("ip", whole=True, drop=2 if aws else 0),
        Col("role", whole=True, drop=3 if aws else 0),
    ] + (
        [
            Col("group", whole=True),
            Col("instance", whole=True),
            Col("lifecycle", whole=True, drop=4),
            Col("health", whole=True, drop=5),
        ]
        if aws
        else [Col("engine ranks", whole=True)]
    )
    cols.append(Col("status"))
    rows = []
    for h in s.hosts:
        shown = _STATE[h.status] + (f" [dim]({escape(h.reason)})[/]" if h.reason else "")
        extra = (
            [h.group or "-", h.instance_id or "-", h.lifecycle_state or "-", h.health or "-"]
            if aws
            else [str(h.ranks if h.ranks is not None else "-")]
        )
        rows.append([h.name, h.ip or "-", h.role, *extra, shown])
    title = f"{'stack' if aws else 'local cluster'} {s.name!r}" + (
        f" ({s.details['mode']})" if "mode" in s.details else ""
    )
    return fitted_table(console or _default_console(), cols, rows, title=title, title_justify="left")


def nodes_table(s: ClusterStatus, console: Console | None = None) -> Table:

    on = replicas_by_node(s.applications)
    cols = [
        Col("ip", whole=True),
        Col("node", whole=True, drop=3),
        Col("alive"),
        Col("head", whole=True, drop=2),
        Col("GPUs", whole=True),
        Col("engine slots", whole=True, drop=1),
        Col("weights", whole=True, drop=4),
        Col("replicas"),
    ]
    rows = [
        [
            n.ip,
            n.node_id[:12],
            "[green]yes[/]" if n.alive else f"[red]no[/] [dim]{escape(n.state_message)}[/]",
            "yes" if n.is_head else "",
            f"{n.gpus:g}"
            + (" " + ",".join(f"{k}:{v:g}" for k, v in n.gpu_model.items()) if n.gpu_model else ""),
            f"{n.cpu_slots:g}" if n.cpu_slots else "-",
            (n.weights or "-")[:16],
            ", ".join(on.get(n.ip, [])) or "-",
        ]
        for n in s.nodes
    ]
    return fitted_table(
        console or _default_console(),
        cols,
        rows,
        title=f"Ray nodes ({s.gpus_total:g} GPUs alive)",
        title_justify="left",
    )


def serve_table(s: ClusterStatus, console: Console | None = None) -> Table:

    # one column for both, a deployment indented under its application: side by side, an app
    # and a deployment name (`LLMServer:deepseek-ai--DeepSeek-R1`) leave no room at 80 columns
    cols = [
        Col("application / deployment", whole=True),
        Col("status", whole=True),
        Col("replicas"),
        Col("where"),
    ]
    rows: list[list[str]] = []
    for a in s.applications:
        rows.append(
            [
                escape(a.name),
                _state(a.status),
                "",
                escape(a.message.splitlines()[-1][:100]) if a.message else "",
            ]
        )
        for d in a.deployments:
            target = f"/{d.target_replicas}" if d.target_replicas is not None else ""
            where = ", ".join(
                f"{r.node_ip or '?'} {'' if r.state == 'RUNNING' else r.state}".strip() for r in d.replicas
            )
            rows.append(
                ["  " + escape(d.name), _state(d.status), f"{d.running}{target} running", where or "-"]
            )
    return fitted_table(console or _default_console(), cols, rows, title="Serve", title_justify="left")


def _default_console() -> Console:
    return _common.console


def render(s: ClusterStatus, console: Console) -> None:
    console.print(hosts_table(s, console))
    if s.nodes_error:
        console.print(f"ray: [red]{escape(s.nodes_error)}[/]", highlight=False)
    if s.nodes:
        console.print(nodes_table(s, console))
    if s.serve_error and s.serve_error != s.nodes_error:
        console.print(f"serve: [red]{escape(s.serve_error)}[/]", highlight=False)
    if s.applications:
        console.print(serve_table(s, console))
    elif not s.serve_error:
        console.print("serve: no applications", highlight=False)
    if s.deployed_serve_config or s.serve_config:
        same = s.deployed_serve_config == s.serve_config
        console.print(
            f"serve config: deployed {str(s.deployed_serve_config)[:12]}, on disk {str(s.serve_config)[:12]}"
            + ("" if same else " [yellow](the head's deploy watcher has not applied the new one yet)[/]"),
            highlight=False,
        )
    if s.rollout is not None:
        color = {"done": "green", "rolled-back": "red", "pending": "yellow", "in-progress": "yellow"}.get(
            s.rollout.outcome, "red"
        )
        console.print(
            f"last rollout: [{color}]{s.rollout.outcome}[/] ({escape(s.rollout.detail)})", highlight=False
        )
    if s.serving is None:
        console.print(f"endpoint: {s.endpoint} (model {s.model})", highlight=False)
    else:
        ok = "[green]yes[/]" if s.serving else f"[red]no[/] ({escape(s.serving_detail)})"
        console.print(f"endpoint {s.endpoint} answers a completion: {ok}", highlight=False)
    if s.power is not None:
        console.print(f"workers: {_POWER[s.power]}", highlight=False)
    if s.lost:
        console.print(f"[red]lost:[/] {', '.join(s.lost)}", highlight=False)
    m = s.metrics
    if m.source == "none":
        console.print(f"metrics: [red]unavailable[/] ({escape(m.error)})", highlight=False)
        return
    if m.error:
        console.print(f"metrics: [red]{m.url}[/]: {m.error}", highlight=False, markup=False)
        return
    where = "AMP workspace" if m.source == "amp" else "Prometheus"
    up = f", {m.targets_up}/{m.targets_total} targets up" if m.targets_total is not None else ""
    console.print(figures_table(m.model_dump(), f"live ({where} {m.url}{up})"))
    if m.cost is not None:
        console.print(cost_table(m.cost.model_dump()))
    elif m.cost_error:
        console.print(f"cost: [red]{escape(m.cost_error)}[/]", highlight=False)
