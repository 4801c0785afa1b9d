"""Ray Serve's REST API on the dashboard: apply a deploy config (what `serve deploy` does),
read the applications and their deployments, wait for RUNNING."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from ray_cluster.driver import NodeError
from ray_cluster.json_read import Json, obj, seq, text
from ray_cluster.readiness import http_json


class DeploymentState(TypedDict):
    status: str
    replicas: int  # RUNNING ones


def load_serve_config(path: str) -> dict[str, Any]:
    """Read and validate a Serve config with Ray's own schema (what `serve deploy` sends)."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        with open(path) as f:
            raw: object = yaml.safe_load(f)
    except OSError as e:
        raise NodeError(f"--serve-config {path!r}: {e.strerror}") from None
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except Exception as e:  # pydantic ValidationError: first error only, one line
        first = e.errors()[0] if isinstance(e, ValidationError) else None
        loc = ".".join(str(x) for x in first["loc"]) if first else ""
        raise NodeError(f"--serve-config {path}: {loc}: {first['msg'] if first else e}") from None
    return schema.model_dump(exclude_unset=True)


def serve_deploy(dashboard: str, config: dict[str, Any]) -> None:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        ServeSubmissionClient(dashboard).deploy_applications(config)  # pyright: ignore[reportUnknownMemberType] - Ray leaves its return unannotated
    except Exception as e:
        raise NodeError(
            f"serve deploy to {dashboard} failed: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def serve_document(dashboard: str, timeout: float = 10.0) -> dict[str, Any]:
    """The dashboard's Serve document (GET /api/serve/applications/); NodeError in one line."""
    url = f"{dashboard.rstrip('/')}/api/serve/applications/"
    try:
        status, payload = http_json("GET", url, None, None, timeout)
    except OSError as e:
        raise NodeError(f"Serve REST API at {dashboard}: {e}") from None
    doc = obj(payload)
    if status != 200 or not isinstance(payload, dict):
        raise NodeError(f"Serve REST API at {dashboard}: HTTP {status}")
    return dict(doc)


def _serve_applications(dashboard: str, timeout: float) -> Json:
    """The dashboard's Serve applications document; {} when Serve/the dashboard is not there."""
    try:
        return obj(serve_document(dashboard, timeout).get("applications"))
    except NodeError:
        return {}


def serve_status(dashboard: str, timeout: float = 5.0) -> dict[str, str]:
    """{app: status} from the dashboard, or {} when Serve/the dashboard is not there."""
    return _statuses(_serve_applications(dashboard, timeout))


def _statuses(apps: Json) -> dict[str, str]:
    return {name: text(obj(app).get("status")) for name, app in apps.items()}


def serve_deployments(dashboard: str, timeout: float = 5.0) -> dict[str, dict[str, DeploymentState]]:
    """{app: {deployment: {"status", "replicas" (RUNNING ones)}}} from the dashboard."""
    return {
        name: {
            d: {
                "status": text(obj(dep).get("status")),
                "replicas": sum(1 for r in seq(obj(dep).get("replicas")) if obj(r).get("state") == "RUNNING"),
            }
            for d, dep in obj(obj(app).get("deployments")).items()
        }
        for name, app in _serve_applications(dashboard, timeout).items()
    }


FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def app_needs_restart(
    apps: Mapping[str, str], deployments: Mapping[str, Mapping[str, DeploymentState]]
) -> bool:
    """Whether a re-apply must delete the apps before deploying: a failed app (serve_status) with
    no deployments (its build failed), or with a failed deployment that has no RUNNING replica
    left. A deployment that is UNHEALTHY because one replica was lost (its worker restarted)
    still serves from the others; deleting the app would stop those too, and Serve places the
    lost replica again by itself once the worker is back (tests/test_faults.py saw a rollout's
    rollback take both replicas down this way)."""
    for name, status in apps.items():
        if status not in FAILED:
            continue
        deps = deployments.get(name) or {}
        if not deps or any(d["status"] in FAILED and not d["replicas"] for d in deps.values()):
            return True
    return False


def failure_messages(apps: Json) -> str:
    """Serve's own reason for each failed application (the REST API's `message`), one line each
    joined: the container or host that ran the deploy may be gone by the time anyone looks."""
    out: list[str] = []
    for name, app in ((n, obj(a)) for n, a in apps.items()):
        if app.get("status") not in FAILED:
            continue
        if app.get("message"):
            out.append(f"{name}: {_last_line(str(app['message']))}")
        # The app's own message is often only "Failed to update the deployments [...]"; the
        # reason is in the failed deployment's message.
        for d, dep in ((d, obj(x)) for d, x in obj(app.get("deployments")).items()):
            if dep.get("status") in FAILED and dep.get("message"):
                out.append(f"{name}/{d}: {_last_line(str(dep['message']))}")
    return "; ".join(out)


def _last_line(message: str) -> str:
    """The last non-empty line of a traceback is the exception itself."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


# An applied config is listed by Serve within seconds (the controller records it before it builds
# anything). Still no application this long after: the deploy was lost, e.g. taken by a head
# that restarted right after (the fault suite's killed head, 2026-12-07: the watcher waited its
# whole 600 s on "no applications", then a retry deployed in 8 s). Raising lets the caller retry.
APPEAR_WITHIN_S = 60.0


def wait_serve_running(
    dashboard: str,
    timeout: float,
    interval: float = 5.0,
    *,
    appear_within: float = APPEAR_WITHIN_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    start = clock()
    while True:
        apps = _serve_applications(dashboard, 5.0)
        status = _statuses(apps)
        if status and all(s == "RUNNING" for s in status.values()):
            return
        waited = clock() - start
        lost = not status and waited >= min(appear_within, timeout)
        if any(s in FAILED for s in status.values()) or lost or waited >= timeout:
            seen = ", ".join(f"{k}={v}" for k, v in status.items()) or "no applications"
            why = failure_messages(apps) or ("the deploy was lost; apply it again" if lost else "")
            raise NodeError(
                f"serve applications not RUNNING after {waited:.0f} s: {seen}" + (f" ({why})" if why else "")
            )
        sleep(interval)
