"""Ray Serve's REST API on the dashboard: apply a deploy config (what `serve deploy` does),
read the applications and their deployments, wait for RUNNING."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray_cluster.driver import NodeError
from ray_cluster.readiness import _http_json


def load_serve_config(path: str) -> dict:
    """Read and validate a Serve config with Ray's own schema (what `serve deploy` sends)."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise NodeError(f"--serve-config {path!r}: {e.strerror}") from None
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except Exception as e:  # pydantic ValidationError: first error only, one line
        errors = e.errors() if isinstance(e, ValidationError) else [{"loc": (), "msg": str(e)}]
        first = errors[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise NodeError(f"--serve-config {path}: {loc}: {first.get('msg')}") from None
    return schema.model_dump(exclude_unset=True)


def serve_deploy(dashboard: str, config: dict) -> None:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        ServeSubmissionClient(dashboard).deploy_applications(config)
    except Exception as e:
        raise NodeError(
            f"serve deploy to {dashboard} failed: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from None


def serve_document(dashboard: str, timeout: float = 10.0) -> dict[str, Any]:
    """The dashboard's Serve document (GET /api/serve/applications/); NodeError in one line."""
    url = f"{dashboard.rstrip('/')}/api/serve/applications/"
    try:
        status, payload = _http_json("GET", url, None, None, timeout)
    except OSError as e:
        raise NodeError(f"Serve REST API at {dashboard}: {e}") from None
    if status != 200 or not isinstance(payload, dict):
        raise NodeError(f"Serve REST API at {dashboard}: HTTP {status}")
    return payload


def _serve_applications(dashboard: str, timeout: float) -> dict:
    """The dashboard's Serve applications document; {} when Serve/the dashboard is not there."""
    try:
        return serve_document(dashboard, timeout).get("applications") or {}
    except NodeError:
        return {}


def serve_status(dashboard: str, timeout: float = 5.0) -> dict:
    """{app: status} from the dashboard, or {} when Serve/the dashboard is not there."""
    return _statuses(_serve_applications(dashboard, timeout))


def _statuses(apps: dict) -> dict:
    return {name: app.get("status", "") for name, app in apps.items()}


def serve_deployments(dashboard: str, timeout: float = 5.0) -> dict:
    """{app: {deployment: {"status", "replicas" (RUNNING ones)}}} from the dashboard."""
    return {
        name: {
            d: {
                "status": dep.get("status", ""),
                "replicas": sum(1 for r in dep.get("replicas") or [] if r.get("state") == "RUNNING"),
            }
            for d, dep in (app.get("deployments") or {}).items()
        }
        for name, app in _serve_applications(dashboard, timeout).items()
    }


FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def app_needs_restart(apps: dict, deployments: dict) -> bool:
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
        if not deps or any(d.get("status") in FAILED and not d.get("replicas") for d in deps.values()):
            return True
    return False


def failure_messages(apps: dict) -> str:
    """Serve's own reason for each failed application (the REST API's `message`), one line each
    joined: the container or host that ran the deploy may be gone by the time anyone looks."""
    out = []
    for name, app in apps.items():
        if app.get("status") not in FAILED:
            continue
        if app.get("message"):
            out.append(f"{name}: {_last_line(app['message'])}")
        # The app's own message is often only "Failed to update the deployments [...]"; the
        # reason is in the failed deployment's message.
        for d, dep in (app.get("deployments") or {}).items():
            if dep.get("status") in FAILED and dep.get("message"):
                out.append(f"{name}/{d}: {_last_line(dep['message'])}")
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
