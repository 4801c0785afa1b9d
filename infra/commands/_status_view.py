"""The one renderer of ClusterStatus (infra/status/model.py): `llmfleet status` (a deployed stack)
and `llmfleet local status` print the same tables from the same model."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

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


def hosts_table(s: ClusterStatus) -> Table:
    aws = s.target == "aws"
    t = Table(title=f"{'stack' if aws else 'local cluster'} {s.name!r}" + (f" ({s.details['mode']})" if "mode" in s.details else ""),
              title_justify="left")  # fmt: skip
    cols = ["host", "ip", "role"] + (
        ["group", "instance", "lifecycle", "health"] if aws else ["engine ranks"]
    )
    for c in [*cols, "status"]:
        t.add_column(c)
    for h in s.hosts:
        shown = _STATE[h.status] + (f" [dim]({escape(h.reason)})[/]" if h.reason else "")
        extra = (
            [h.group or "-", h.instance_id or "-", h.lifecycle_state or "-", h.health or "-"]
            if aws
            else [str(h.ranks if h.ranks is not None else "-")]
        )
        t.add_row(h.name, h.ip or "-", h.role, *extra, shown)
    return t


def nodes_table(s: ClusterStatus) -> Table:
    on = replicas_by_node(s.applications)
    t = Table(title=f"Ray nodes ({s.gpus_total:g} GPUs alive)", title_justify="left")
    for c in ("ip", "node", "alive", "head", "GPUs", "engine slots", "weights", "replicas"):
        t.add_column(c)
    for n in s.nodes:
        t.add_row(
            n.ip,
            n.node_id[:12],
            "[green]yes[/]" if n.alive else f"[red]no[/] [dim]{escape(n.state_message)}[/]",
            "yes" if n.is_head else "",
            f"{n.gpus:g}"
            + (" " + ",".join(f"{k}:{v:g}" for k, v in n.gpu_model.items()) if n.gpu_model else ""),
            f"{n.cpu_slots:g}" if n.cpu_slots else "-",
            (n.weights or "-")[:16],
            ", ".join(on.get(n.ip, [])) or "-",
        )
    return t


def serve_table(s: ClusterStatus) -> Table:
    t = Table(title="Serve", title_justify="left")
    for c in ("application", "deployment", "status", "replicas", "where"):
        t.add_column(c)
    for a in s.applications:
        t.add_row(
            a.name, "", _state(a.status), "", escape(a.message.splitlines()[-1][:100]) if a.message else ""
        )
        for d in a.deployments:
            target = f"/{d.target_replicas}" if d.target_replicas is not None else ""
            where = ", ".join(
                f"{r.node_ip or '?'} {'' if r.state == 'RUNNING' else r.state}".strip() for r in d.replicas
            )
            t.add_row("", d.name, _state(d.status), f"{d.running}{target} running", where or "-")
    return t


def render(s: ClusterStatus, console: Console) -> None:
    console.print(hosts_table(s))
    if s.nodes_error:
        console.print(f"ray: [red]{escape(s.nodes_error)}[/]", highlight=False)
    if s.nodes:
        console.print(nodes_table(s))
    if s.serve_error and s.serve_error != s.nodes_error:
        console.print(f"serve: [red]{escape(s.serve_error)}[/]", highlight=False)
    if s.applications:
        console.print(serve_table(s))
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
