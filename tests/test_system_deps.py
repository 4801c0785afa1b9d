"""scripts/system-deps.sh (issue #30 point 6): `make demo` installs only the Debian packages the demo
uses, and says so; `make test` installs the tests' whole set. The package lists are read from the
script itself (`--list`), never copied here; the script runs for real, as a non-root user with a
PATH that lacks the packages, and as root with --dry-run (nothing is installed)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shell import assert_bash_and_shellcheck

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "system-deps.sh"
# The code `llmfleet local up` (without --image) and `local chat` / `local status` run: the
# external commands it calls must all be in the script's table.
DEMO_MODULES = [
    "infra/local/hosts.py",
    "infra/local/processes.py",
    "infra/local/prometheus.py",
    "infra/local/cluster.py",
    "ray_cluster/nic.py",
    "ray_cluster/node.py",
]
# What the issue found `make demo` installing although the demo never runs it.
NOT_FOR_THE_DEMO = {"docker.io", "mmdebstrap", "docker-registry", "openssh-server", "openssh-client", "zstd"}


def _rows(set_name: str) -> dict[str, dict[str, str]]:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--list", set_name], capture_output=True, text=True, check=True
    ).stdout
    rows = {}
    for line in out.splitlines():
        pkg, check, need, used = line.split("\t")
        rows[pkg] = {"check": check, "need": need, "used": used}
    assert rows, f"--list {set_name} printed no rows"
    return rows


def test_the_script_is_clean_bash() -> None:
    assert_bash_and_shellcheck(SCRIPT)


def test_demo_set_is_a_subset_of_the_test_set_without_the_image_and_ssh_packages() -> None:
    demo, full = _rows("demo"), _rows("test")
    assert demo.items() <= full.items()
    assert not NOT_FOR_THE_DEMO & demo.keys(), demo.keys()
    assert NOT_FOR_THE_DEMO <= full.keys()  # still installed for the tests
    assert len(full) > len(demo)


def _string_constants(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_every_demo_package_is_called_by_the_code_it_names() -> None:
    """Each demo row's 'used by' names files that exist, and one of the Python ones holds the
    package's command as a whole string literal (`["ip", ...]`, `BINARY = "prometheus"`)."""
    for pkg, row in _rows("demo").items():
        files = re.findall(r"[\w./-]+\.(?:py|sh)\b", row["used"])
        assert files, f"{pkg}: 'used by' names no file: {row['used']!r}"
        for f in files:
            assert (ROOT / f).is_file(), f"{pkg}: {f} does not exist"
        command = Path(row["check"]).name
        users = [f for f in files if f.endswith(".py") and command in _string_constants(ROOT / f)]
        assert users, f"{pkg}: none of {files} calls {command!r}"


def _called_commands(path: Path) -> tuple[set[str], set[str]]:
    """Literal command names in a module: (looked up first with `shutil.which("x")`, run directly as
    the first item of a list literal given to subprocess.run / Popen)."""
    looked_up, run = set(), set()
    for n in ast.walk(ast.parse(path.read_text())):
        if not isinstance(n, ast.Call) or not n.args:
            continue
        name, first = ast.unparse(n.func), n.args[0]
        if name == "shutil.which" and isinstance(first, ast.Constant):
            looked_up.add(first.value)
        elif name in ("subprocess.run", "subprocess.Popen") and isinstance(first, ast.List) and first.elts:
            if isinstance(first.elts[0], ast.Constant):
                run.add(first.elts[0].value)
    return looked_up, run


def test_every_command_the_demo_code_calls_is_in_the_table() -> None:
    """A command the demo's code runs directly is in the demo set; one it only runs after
    `shutil.which` finds it (iptables: the FORWARD rule when br_netfilter is on; redis-server:
    --gcs-redis) may be left to the test set, but must be in the table."""
    scans = [_called_commands(ROOT / m) for m in DEMO_MODULES]
    looked_up = set().union(*(s[0] for s in scans))
    run = set().union(*(s[1] for s in scans))
    assert "ip" in run and "iptables" in looked_up  # the scan sees the calls at all
    full = {Path(r["check"]).name: pkg for pkg, r in _rows("test").items()}
    demo = {Path(r["check"]).name for r in _rows("demo").values()}
    assert looked_up | run <= full.keys(), f"not in scripts/system-deps.sh: {(looked_up | run) - full.keys()}"
    assert run <= demo, f"run by the demo's code but not in the demo set: {run - demo}"


@pytest.fixture
def bare_path() -> Iterator[Path]:
    """A PATH directory holding only `id`, world-readable so an unprivileged user can run from it."""
    d = Path(tempfile.mkdtemp(prefix="llmf-deps-"))
    try:
        d.chmod(0o755)
        (d / "id").symlink_to(shutil.which("id"))
        shutil.copy(SCRIPT, d / "system-deps.sh")
        (d / "system-deps.sh").chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d)


def _run_unprivileged(d: Path, *args: str) -> subprocess.CompletedProcess:
    argv = ["/bin/bash", str(d / "system-deps.sh"), *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, the non-root path needs util-linux's setpriv to drop to nobody")
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return subprocess.run(argv, env={"PATH": str(d)}, capture_output=True, text=True, timeout=30)


def test_not_root_says_what_is_missing_and_the_command_and_installs_nothing(bare_path: Path) -> None:
    p = _run_unprivileged(bare_path, "demo")
    # iproute2 is required (every node reads its NIC with `ip`): stop before the demo starts.
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert lines[0] == (
        "system-deps (demo): missing Debian packages iproute2 prometheus; not root, so nothing is "
        "installed; install them as root: apt-get install -y --no-install-recommends iproute2 prometheus"
    )
    assert lines[1] == "error: system-deps (demo): iproute2 is required; install it and run again"

    (bare_path / "ip").symlink_to("/bin/true")  # now only the optional prometheus is missing
    p = _run_unprivileged(bare_path, "demo")
    assert p.returncode == 0, p.stderr
    first, *rest = p.stderr.splitlines()
    assert first.endswith("install them as root: apt-get install -y --no-install-recommends prometheus")
    assert rest and all(line.startswith("system-deps (demo): without prometheus: ") for line in rest)
    assert not NOT_FOR_THE_DEMO & set(re.findall(r"[\w.-]+", p.stderr))


@pytest.mark.skipif(
    os.geteuid() != 0, reason="the as-root line needs root (run with --dry-run: nothing installed)"
)
def test_as_root_it_says_which_packages_it_installs_before_installing(bare_path: Path) -> None:
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("no apt-get: the as-root path is Debian's")
    (bare_path / "apt-get").symlink_to("/bin/false")  # --dry-run never calls it; if it did, exit 1
    p = subprocess.run(
        ["/bin/bash", str(bare_path / "system-deps.sh"), "--dry-run", "demo"],
        env={"PATH": str(bare_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert (
        p.stdout
        == "system-deps (demo): would install Debian packages as root (apt-get): iproute2 prometheus\n"
    )
    full = subprocess.run(
        ["/bin/bash", str(bare_path / "system-deps.sh"), "--dry-run", "test"],
        env={"PATH": str(bare_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Every package whose command is not on this bare PATH (or whose absolute path is missing
    # here), in the table's order: the image's and sshd's packages included.
    expected = [
        pkg
        for pkg, r in _rows("test").items()
        if not r["check"].startswith("/") or not os.access(r["check"], os.X_OK)
    ]
    assert (
        full.stdout
        == f"system-deps (test): would install Debian packages as root (apt-get): {' '.join(expected)}\n"
    )
    assert {"mmdebstrap", "zstd", "shellcheck"} <= set(expected)


def test_an_unknown_set_is_refused_in_one_line() -> None:
    p = subprocess.run(["bash", str(SCRIPT), "prod"], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr == "error: set 'prod' is not one of: demo, test\n"


def test_make_demo_runs_the_demo_set_and_make_test_the_full_one() -> None:
    def prerequisites(target: str) -> list[str]:
        m = re.search(rf"^{target}:(.*)$", (ROOT / "Makefile").read_text(), re.M)
        assert m, target
        return m.group(1).split()

    def recipe(target: str) -> str:
        return subprocess.run(
            ["make", "-s", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert "system-deps-demo" in prerequisites("demo") and "system-deps" not in prerequisites("demo")
    assert "system-deps" in prerequisites("test")
    assert recipe("system-deps-demo") == "bash scripts/system-deps.sh demo"
    assert recipe("system-deps") == "bash scripts/system-deps.sh test"
