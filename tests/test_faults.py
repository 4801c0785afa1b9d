"""Fault injection on a real local cluster (issue #26 point 8): `make faults`, not the default run.

A 3-host cluster (head + 2 worker hosts = 2 replicas of the production app on vLLM's CPU build)
is driven through the CLI, under a steady load through the official `openai` client
(tests/fault_load.py says what is measured). Each case injects one fault and waits until the
cluster is back at full strength: the Serve app RUNNING with both LLM replicas RUNNING and a
completion answering. Then a second cluster with `--gcs-redis` (Debian's redis-server as the GCS
store) has its head killed.

Recovery times are wall-clock on the shared 2-core machine: other work on it makes them noisy.
The module writes the fault table (case, recovery time, failed/total requests) to
$LLMFLEET_FAULTS_TABLE when set (`make faults` sets benchmarks/faults-table.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from infra.local import hosts, processes
from infra.local.cluster import keep_ray_logs
from infra.local.state import LocalState, load_state
from ray_cluster import serve_rest
from tests.fault_load import Load, Window
from tests.ray_fixtures import local_subnet

pytestmark = [pytest.mark.faults, pytest.mark.ray]

ROOT = os.geteuid() == 0
_BIN = Path(sys.executable).parent / "llmfleet"
LLMFLEET = [str(_BIN)] if _BIN.exists() else [sys.executable, "-c", "from infra.cli import main; main()"]

HEAD_BACK_WITHIN_S = 180  # the bound: serving resumes after a head kill without any command
FULL_STRENGTH_WITHIN_S = 600  # engines load in ~60 s on an idle machine; minutes when the 2 cores are shared
# SIGSTOP: the replica's check fails after ENGINE_LIVENESS_TIMEOUT_S (5 s); Serve marks the
# replica unhealthy after 3 failures in a row, one every health_check_period_s (10 s): ~45 s,
# with room for the controller's reconcile loop on a loaded machine.
NOTICE_WITHIN_S = 120

ROWS: list[dict] = []


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LLMFLEET, "local", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path_factory, tag: str, *extra: str) -> dict:
    name = f"f{tag}{os.getpid() % 10000}"
    subnet = local_subnet(name, ROOT)  # clear of the other Ray tests' subnets
    port = free_port()
    sd = tmp_path_factory.mktemp(f"faults-{tag}")
    env = {"LLMFLEET_STATE_DIR": str(sd), "LLMFLEET_DATA_DIR": str(tmp_path_factory.mktemp(f"data-{tag}"))}
    t0 = time.monotonic()
    r = cli("up", "--name", name, "--hosts", "3", "--subnet", str(subnet), "--port", str(port), "--json",
            *extra, env=env, timeout=1200)  # fmt: skip
    c = {"name": name, "env": env, "state_dir": sd, "port": port}
    if r.returncode != 0:
        stop(c)
        pytest.fail(f"local up {' '.join(extra)} failed: {r.stderr[-2000:]}")
    c["doc"] = json.loads(r.stdout)
    print(f"local up {name} {' '.join(extra)}: {time.monotonic() - t0:.0f} s")
    return c


def stop(c: dict) -> None:
    keep = os.environ.get("LLMFLEET_FAULTS_LOGS")  # where to copy the hosts' logs (down removes them)
    logs = Path(c["state_dir"]) / "logs" / c["name"]
    if keep and logs.is_dir():
        shutil.copytree(logs, Path(keep) / c["name"], dirs_exist_ok=True)
    if keep:  # and Ray's own (raylets, GCS, Serve's controller, proxy, replicas): `down` removes them
        keep_ray_logs(state_of(c).temp_dir, Path(keep) / c["name"] / "ray")
    cli("down", "--name", c["name"], env=c["env"], timeout=180)
    hosts.teardown(hosts.prefix_for(c["name"]), cluster=c["name"], state_dir=c["state_dir"])


def state_of(c: dict) -> LocalState:
    st = load_state(c["name"], Path(c["state_dir"]))
    assert st is not None, f"no state file for {c['name']}"
    return st


def dashboard(c: dict) -> str:
    st = state_of(c)
    return f"http://{st.hosts[0].ip}:{st.ports.dashboard}"


def load_for(c: dict, **kw) -> Load:
    d = c["doc"]
    return Load(d["endpoint"], d["token"], d["model"], **kw)


# ---------------------------------------------------------------- processes


def _proc_table() -> dict[int, tuple[int, str]]:
    out = {}
    for e in Path("/proc").iterdir():
        if e.name.isdigit():
            try:
                stat = (e / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[int(e.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), comm)
    return out


def descendants(root: int) -> set[int]:
    table = _proc_table()
    out, frontier = set(), {root}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier} - out
        out |= frontier
    return out


def host_procs(c: dict, host_name: str, comm_prefix: str) -> list[int]:
    st = state_of(c)
    host = next(h for h in st.hostset.hosts if h.name == host_name)
    table = _proc_table()
    return sorted(p for p in processes.host_pids(host) if table.get(p, (0, ""))[1].startswith(comm_prefix))


def host_name(c: dict, i: int) -> str:
    return state_of(c).hosts[i].name


def engine_pids(c: dict) -> dict[str, list[int]]:
    """Each worker host's vLLM engine-core processes (the replica's engine)."""
    return {host_name(c, i): host_procs(c, host_name(c, i), "VLLM::EngineCor") for i in (1, 2)}


def node_pids(c: dict) -> dict[str, int | list[int]]:
    """The GCS, every host's raylet and supervisor: what a Serve-config change must not restart."""
    st = state_of(c)
    out: dict[str, int | list[int]] = {"gcs_server": host_procs(c, host_name(c, 0), "gcs_server")}
    for h in st.hosts:
        out[f"{h.name} raylet"] = host_procs(c, h.name, "raylet")
        out[f"{h.name} supervisor"] = h.supervisor_pid
    return out


def kill(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- waiting and recording


def full_strength(c: dict) -> bool:
    """The app RUNNING with both LLM replicas RUNNING (Serve's own view)."""
    try:
        apps = serve_rest.serve_status(dashboard(c), timeout=3)
        deps = serve_rest.serve_deployments(dashboard(c), timeout=3)
    except Exception:  # noqa: BLE001 - the head may be away
        return False
    llm = [d for name, d in deps.get("llm", {}).items() if name.startswith("LLMServer")]
    return apps.get("llm") == "RUNNING" and len(llm) == 1 and llm[0]["replicas"] == 2


def wait_until(pred, timeout: float, what: str, interval: float = 1.0) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic()


def back_to_full_strength(
    c: dict, load: Load, t0: float, timeout: float = FULL_STRENGTH_WITHIN_S
) -> float | None:
    """Seconds from t0 until the app is at full strength and 4 more requests succeeded; None when
    it was not within `timeout` (the case records its row, then fails)."""
    try:
        t = wait_until(lambda: full_strength(c), timeout - (time.monotonic() - t0), "full strength", 2.0)
    except AssertionError:
        return None
    return t - t0 if load.wait_successes(4, t, 120) else None


def record(case: str, recovery: float | None, what: str, w: Window, note: str = "") -> None:
    gap = w.serving_gap()
    row = {
        "case": case,
        "recovery_s": None if recovery is None else round(recovery, 1),
        "recovery_is": what,
        "failed": len(w.failed),
        "total": w.total,
        "gap_s": None if gap is None else round(gap, 1),
        "errors": w.errors(),
        "note": note,
    }
    ROWS.append(row)
    print(json.dumps(row))
    write_table()  # after every case: a run cut short still leaves its rows


def table(rows: list[dict]) -> str:
    lines = [
        "| case | recovery (s) | recovery is | failed / total requests | serving gap (s) | notes |",
        "|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:g}"
        gap = "never" if r["gap_s"] is None else f"{r['gap_s']:g}"
        errs = f" errors: {', '.join(r['errors'])}." if r["errors"] else ""
        lines.append(
            f"| {r['case']} | {rec} | {r['recovery_is']} | {r['failed']} / {r['total']} | {gap} | {r['note']}{errs} |"
        )
    return "\n".join(lines) + "\n"


def write_table() -> None:
    out = os.environ.get("LLMFLEET_FAULTS_TABLE")
    if out and ROWS:
        Path(out).write_text(table(ROWS))


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    print("\n" + table(ROWS))
    write_table()


def head_fault(
    c: dict, case: str, inject, side: Load | None = None
) -> tuple[Window, float | None, Window | None]:
    """`side`: a second load already running (a worker's own proxy); its window, from the same
    t0 to the head's recovery, is returned third."""
    head, workers = host_name(c, 0), [host_name(c, i) for i in (1, 2)]
    gcs_before = set(host_procs(c, head, "gcs_server"))
    raylets_before = {h: set(host_procs(c, h, "raylet")) for h in workers}
    seen: dict[str, float] = {}  # what came back when: the timeline behind the recovery time
    done = threading.Event()
    with load_for(c) as load:
        time.sleep(5)
        t0 = time.monotonic()

        def timeline() -> None:
            while not done.wait(1.0):
                now = time.monotonic() - t0
                if not set(host_procs(c, head, "gcs_server")) & gcs_before:
                    seen.setdefault("old GCS gone", now)
                    if host_procs(c, head, "gcs_server"):
                        seen.setdefault("new GCS", now)
                for h in workers:
                    if set(host_procs(c, h, "raylet")).isdisjoint(raylets_before[h]):
                        seen.setdefault(f"{h[-2:]} raylet gone", now)
                        if host_procs(c, h, "raylet"):
                            seen.setdefault(f"{h[-2:]} new raylet", now)

        watcher = threading.Thread(target=timeline, daemon=True)
        watcher.start()
        inject()
        # The fault must have taken effect before "back" means anything: a SIGTERMed
        # `ray start` drains first, and the old head answers meanwhile.
        wait_until(lambda: "old GCS gone" in seen, 120, "the head's GCS stopped")
        recovered = back_to_full_strength(c, load, t0)
        done.set()
        watcher.join(5)
        w = load.window(t0, lead=1)
        sw = side.window(t0, lead=1) if side is not None else None
    note = "; ".join(f"{k} at {v:.0f} s" for k, v in sorted(seen.items(), key=lambda kv: kv[1]))
    record(case, recovered, "fault -> both replicas RUNNING", w, note)
    assert recovered is not None, f"not back to full strength within {FULL_STRENGTH_WITHIN_S} s"
    return w, w.serving_gap(), sw


# ---------------------------------------------------------------- one cluster, the cases in order


@pytest.fixture(scope="class")
def fc(tmp_path_factory):
    c = start(tmp_path_factory, "a")
    try:
        yield c
    finally:
        stop(c)


class TestFaults:
    def test_serve_config_change_in_place_keeps_every_node_process_and_fails_nothing(self, fc):
        st = state_of(fc)
        cfg_path = Path(st.serve_config)
        doc = yaml.safe_load(cfg_path.read_text())
        llm = next(n for n in serve_rest.serve_deployments(dashboard(fc))["llm"] if n.startswith("LLMServer"))
        before_nodes, before_engines = node_pids(fc), engine_pids(fc)
        assert all(before_engines.values()) and before_nodes["gcs_server"], (before_nodes, before_engines)
        # a value the deployment does not have yet (a re-run on the same cluster changes it again)
        deps = doc["applications"][0].get("deployments") or [{}]
        want = (deps[0].get("max_ongoing_requests") or 6) + 1
        doc["applications"][0]["deployments"] = [{"name": llm, "max_ongoing_requests": want}]
        with load_for(fc) as load:
            time.sleep(5)
            t0 = time.monotonic()
            cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))  # what a head rollout does

            def applied() -> bool:
                app = serve_rest.serve_document(dashboard(fc))["applications"]["llm"]
                deps = (app.get("deployed_app_config") or {}).get("deployments") or []
                return any(d.get("max_ongoing_requests") == want for d in deps) and full_strength(fc)

            t = wait_until(applied, 180, "the watcher applied the new Serve config", 1.0)
            time.sleep(10)  # and it keeps answering under the new config
            w = load.window(t0, lead=5)
        record("Serve-config-only change (max_ongoing_requests, in place)", t - t0,
               "config file written -> Serve runs it", w,
               "GCS, raylets, supervisors and engine cores: same PIDs")  # fmt: skip
        assert node_pids(fc) == before_nodes and engine_pids(fc) == before_engines
        assert w.failed == [] and w.total >= 10, (w.total, w.errors())

    def test_killed_serve_controller_is_restarted_and_nothing_fails(self, fc):
        [ctl] = host_procs(fc, host_name(fc, 0), "ray::ServeCont")
        with load_for(fc) as load:
            time.sleep(5)
            t0 = time.monotonic()
            kill([ctl])
            t = wait_until(
                lambda: (
                    [p for p in host_procs(fc, host_name(fc, 0), "ray::ServeCont") if p != ctl]
                    and full_strength(fc)
                ),
                180,
                "a new Serve controller with the app at full strength",
            )
            time.sleep(10)
            w = load.window(t0, lead=1)
        record("kill the Serve controller (SIGKILL)", t - t0, "new controller, app RUNNING", w)
        assert w.failed == [], w.errors()

    def test_rollout_to_a_broken_node_config_rolls_back_names_the_host_other_replica_answers(self, fc):
        from infra.local import rollout as lr
        from infra.rollout import plan as p
        from infra.rollout import ssm as rs
        from ray_cluster.readiness import probe_completion
        from tests.moto_fixtures import DUMMY_CREDS, MotoServer

        st = state_of(fc)
        first, second = st.hosts[1].name, st.hosts[2].name
        name = lr.parameter_name(fc["name"], "worker")
        token, endpoint = fc["doc"]["token"], fc["doc"]["endpoint"][: -len("/v1")]

        def check(gate: str, host: p.Host) -> tuple[bool, str]:
            try:
                probe_completion(endpoint, token, fc["doc"]["model"], timeout=30)
            except Exception as e:  # noqa: BLE001
                return False, str(e).splitlines()[0]
            return True, ""

        saved = {k: os.environ.get(k) for k in DUMMY_CREDS}
        os.environ.update(DUMMY_CREDS)
        try:
            with MotoServer() as moto:
                ssm = moto.client("ssm")
                # what `pulumi up` leaves: the good config (labelled) and the new, broken one: an
                # object store below Ray's minimum, which `ray start` refuses
                ssm.put_parameter(
                    Name=name, Value=json.dumps({"ray_args": []}), Type="String", Tier="Advanced"
                )
                ssm.label_parameter_version(Name=name, ParameterVersion=1, Labels=[rs.GOOD_LABEL])
                broken = {"ray_args": ["--object-store-memory=1000"]}
                ssm.put_parameter(Name=name, Value=json.dumps(broken), Type="String", Overwrite=True)
                versions = {"worker": rs.role_versions(ssm, "worker", name)}
                runner = lr.LocalRunner(ssm, fc["name"], Path(fc["state_dir"]))
                lines: list[str] = []
                with load_for(fc) as load:
                    time.sleep(5)
                    t0 = time.monotonic()
                    result = rs.run_rollout(runner, lr.worker_hosts(st), versions, check, lines.append)
                    t_done = time.monotonic()
                    recovered = back_to_full_strength(fc, load, t0)
                    w = load.window(t0, lead=1)
                    during = Window([r for r in w.requests if r.start <= t_done], t0)
                history = ssm.get_parameter_history(Name=name)["Parameters"]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        print("\n".join(lines))
        record("rollout to a broken worker node config (rolled back)", recovered,
               "rollout start -> rolled back, both replicas RUNNING", w,
               f"rollout took {t_done - t0:.0f} s: {result.line()}; {len(during.failed)} failed while it ran")  # fmt: skip
        assert recovered is not None, f"not back to full strength within {FULL_STRENGTH_WITHIN_S} s"
        assert result.outcome == "rolled-back", result.line()
        assert result.failure is not None and result.failure.host.instance_id == first, result.line()
        assert first in result.line() and "object" in result.line().lower(), result.line()
        assert result.after_rollback == "the previous deployment answers again"
        # the good config is the newest version again, labelled good; the second host was never touched
        assert json.loads(history[-1]["Value"]) == {"ray_args": []} and rs.GOOD_LABEL in history[-1]["Labels"]
        assert not any(second in ln for ln in lines if ln.startswith("apply"))
        assert w.failed == [], w.errors()

    def test_killed_head_serves_again_within_180_s_without_any_command(self, fc):
        head = state_of(fc).hosts[0]
        pids = descendants(head.supervisor_pid)
        w, gap, _ = head_fault(fc, "kill the head (SIGKILL its Ray processes)", lambda: kill(pids))
        assert gap is not None and gap < HEAD_BACK_WITHIN_S, (gap, w.errors())

    def test_restarted_ray_on_the_head_serves_again_without_any_command(self, fc):
        head = state_of(fc).hosts[0]
        [child] = [p for p in descendants(head.supervisor_pid) if _proc_table()[p][0] == head.supervisor_pid]
        # The supervisor's child is `unshare`, which blocks SIGTERM; `ray start --block` is the
        # init of the node's PID namespace (processes.PID_NAMESPACE), as in a container.
        ray_start = (
            processes.namespace_init(child)
            if processes.own_pid_namespace(state_of(fc).hostset.hosts[0])
            else child
        )
        assert ray_start is not None
        w, gap, _ = head_fault(
            fc,
            "restart the Ray processes on the head (SIGTERM `ray start --block`)",
            lambda: kill([ray_start], signal.SIGTERM),
        )
        assert gap is not None and gap < HEAD_BACK_WITHIN_S, (gap, w.errors())

    def test_killed_worker_host_comes_back_other_replica_answers(self, fc):
        worker = host_name(fc, 2)
        pids = processes.ray_pids(state_of(fc), worker)
        with load_for(fc) as load:
            time.sleep(5)
            t0 = time.monotonic()
            kill(pids)
            # Serve still counts the replica RUNNING for a moment: "back" means something only
            # after it noticed (the 2026-12-07 run measured 0.1 s without this wait)
            wait_until(lambda: not full_strength(fc), 120, "Serve notices the lost replica")
            recovered = back_to_full_strength(fc, load, t0)
            w = load.window(t0, lead=1)
        record("kill a worker host (SIGKILL its Ray processes)", recovered,
               "kill -> its replica RUNNING again", w)  # fmt: skip
        assert recovered is not None, f"not back to full strength within {FULL_STRENGTH_WITHIN_S} s"
        assert w.failed == [], w.errors()

    def test_weights_uri_change_restarts_the_engines_on_the_new_weights(self, fc):
        st = state_of(fc)
        cfg_path = Path(st.serve_config)
        doc = yaml.safe_load(cfg_path.read_text())
        llm_cfg = doc["applications"][0]["args"]["llm_configs"][0]
        old = llm_cfg["model_loading_config"]["model_source"]
        new = old.rstrip("/") + "-v2"
        shutil.copytree(old, new, dirs_exist_ok=True)  # the new checkpoint, staged on every host
        llm_cfg["model_loading_config"]["model_source"] = new
        before = engine_pids(fc)
        with load_for(fc) as load:
            time.sleep(5)
            t0 = time.monotonic()
            cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))

            def on_new_weights() -> bool:
                app = serve_rest.serve_document(dashboard(fc))["applications"]["llm"]
                cfgs = (app.get("deployed_app_config") or {}).get("args", {}).get("llm_configs") or [{}]
                now = engine_pids(fc)
                return (
                    cfgs[0].get("model_loading_config", {}).get("model_source") == new
                    and full_strength(fc)
                    and all(now[h] and set(now[h]).isdisjoint(before[h]) for h in now)
                )

            try:  # a timeout still records its row (the 2026-12-07 run lost it)
                t = wait_until(
                    on_new_weights, FULL_STRENGTH_WITHIN_S, "both replicas on the new weights", 2.0
                )
            except AssertionError:
                t = None
            ok = t is not None and load.wait_successes(4, t, 120)
            w = load.window(t0, lead=1)
        record("weights URI change (model_source -> a new copy)", None if t is None else t - t0,
               "config written -> both replicas' new engines RUNNING", w)  # fmt: skip
        assert ok, f"not on the new weights at full strength within {FULL_STRENGTH_WITHIN_S} s"

    def test_frozen_engine_core_is_noticed_by_the_health_checks(self, fc):
        worker = host_name(fc, 1)
        [core] = engine_pids(fc)[worker]
        noticed = None
        with load_for(fc, timeout=20) as load:
            time.sleep(5)
            t0 = time.monotonic()
            kill([core], signal.SIGSTOP)
            try:
                noticed = wait_until(lambda: not full_strength(fc), NOTICE_WITHIN_S, "Serve notices", 2.0)
            except AssertionError:
                pass
            finally:
                kill([core], signal.SIGCONT)
            t_cont = time.monotonic()
            recovered = back_to_full_strength(fc, load, t0)
            w = load.window(t0, lead=1)
        back = "not within the bound" if recovered is None else f"{recovered:.0f} s"
        if noticed is not None:
            record("freeze the engine core (SIGSTOP)", noticed - t0, "SIGSTOP -> Serve marks the replica unhealthy",
                   w, f"back at full strength after {back}")  # fmt: skip
        else:
            record("freeze the engine core (SIGSTOP)", None, f"not noticed within {NOTICE_WITHIN_S} s", w,
                   f"SIGCONT at {t_cont - t0:.0f} s; full strength: {back} after the SIGSTOP")  # fmt: skip
        assert noticed is not None, (
            f"Serve's health check did not notice a frozen engine core in {NOTICE_WITHIN_S} s"
        )


# ---------------------------------------------------------------- the head with its GCS on redis


@pytest.fixture(scope="class")
def rc(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (scripts/system-deps.sh installs it)")
    c = start(tmp_path_factory, "r", "--gcs-redis")
    try:
        yield c
    finally:
        stop(c)


class TestGcsRedis:
    def test_killed_head_with_gcs_on_redis_keeps_the_workers_and_serves_again(self, rc):
        st = state_of(rc)
        head = st.hosts[0]
        workers_before = {h.name: host_procs(rc, h.name, "raylet") for h in st.hosts[1:]}
        engines_before = engine_pids(rc)
        pids = descendants(head.supervisor_pid)
        # A client of a worker host's own Serve proxy (proxy_location EveryNode locally): the
        # proxy, the ingress replica and an LLM replica there need no head while Serve runs.
        doc = rc["doc"]
        worker_ep = f"http://{st.hosts[1].ip}:{rc['port']}/v1"
        with Load(worker_ep, doc["token"], doc["model"]) as side:
            assert side.wait_successes(4, time.monotonic(), 120), "the worker's own proxy does not answer"
            w, gap, sw = head_fault(
                rc, "kill the head, GCS on redis (--gcs-redis)", lambda: kill(pids), side=side
            )
        assert sw is not None
        # What GCS fault tolerance gives here: the workers' raylets and engines live through the
        # head's restart (same PIDs: no engine reload), and serving resumes when the head's
        # proxy and ingress are back.
        kept = (
            "workers' raylets and engine cores: same PIDs"
            if (
                {h: host_procs(rc, h, "raylet") for h in workers_before} == workers_before
                and engine_pids(rc) == engines_before
            )
            else "workers restarted (raylet or engine PIDs changed)"
        )
        ROWS[-1]["note"] = f"{kept}; {ROWS[-1]['note']}"
        write_table()
        record("same head kill, a client of a worker host's own proxy (--gcs-redis)",
               None if ROWS[-1]["recovery_s"] is None else ROWS[-1]["recovery_s"],
               "fault -> both replicas RUNNING (the head's view)", sw,
               f"proxy {worker_ep.split('//')[1].split('/')[0]}: every request from 1 s before the kill "
               "to the head's recovery")  # fmt: skip
        # What Ray allows here (measured 2026-12-07): the worker's proxy, ingress and LLM replica
        # answer through the head's absence; a request still waiting in the ingress's router for a
        # replica when the restarted Serve controller re-broadcasts its state gets Serve's own 503
        # (DeploymentUnavailableError, as when the controller alone is killed). Each client thread
        # has one request in flight, so at most one such 503 per thread; no connection is refused.
        assert sw.total >= 10, sw.total
        assert all(r.error == "InternalServerError 503" for r in sw.failed), sw.errors()
        assert len(sw.failed) <= side.concurrency, (len(sw.failed), sw.errors())
        assert gap is not None and gap < HEAD_BACK_WITHIN_S, (gap, w.errors())
        assert {h: host_procs(rc, h, "raylet") for h in workers_before} == workers_before
        assert engine_pids(rc) == engines_before
