"""The boot contract (user data) and llmfleet-apply: shell-checked, stable, and a real round trip
of the packed node script."""

import subprocess

import pytest

from infra.boot.node_apply import (
    launcher_user_data,
    node_parameter_name,
    pack_script,
    script_digest,
    unpack_script,
)
from tests.shell import assert_bash_and_shellcheck


@pytest.mark.parametrize("role", ["head", "worker"])
def test_launcher_is_valid_bash_and_shellcheck_clean(role, tmp_path):
    script = tmp_path / f"{role}.sh"
    script.write_text(launcher_user_data(role, "us-east-1", node_parameter_name("prod", role)))
    assert_bash_and_shellcheck(script)


def test_the_embedded_apply_script_unpacks_what_the_program_packs(tmp_path):
    """Run llmfleet-apply's own fetch/unpack/run lines against a stub `aws` that returns a packed script."""
    ud = launcher_user_data("worker", "us-east-1", "/llmfleet/prod/node/worker")
    apply = ud.split("<<'LLMFLEET_APPLY_EOF'\n", 1)[1].split("LLMFLEET_APPLY_EOF", 1)[0]
    node = '#!/bin/bash\necho "ran in mode ${LLMFLEET_APPLY_MODE}" > "$OUT"\n'
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(f"#!/bin/sh\nprintf '%s' '{pack_script(node)}'\n")
    (bin_dir / "aws").chmod(0o755)
    # The real paths (/etc/llmfleet, /run) are redirected into tmp_path for the test.
    apply = apply.replace("/etc/llmfleet", str(tmp_path / "etc")).replace("/run/", f"{tmp_path}/")
    (tmp_path / "apply.sh").write_text(apply)
    out = tmp_path / "out.txt"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(out)}
    proc = subprocess.run(
        ["bash", str(tmp_path / "apply.sh"), "/llmfleet/prod/node/worker", "boot"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "ran in mode boot\n"
    assert (tmp_path / "etc" / "node.sh").read_text() == node


def test_launcher_names_only_the_boot_contract():
    ud = launcher_user_data("head", "eu-west-1", "/llmfleet/s/node/head")
    assert "AWS_DEFAULT_REGION=eu-west-1" in ud and "/llmfleet/s/node/head boot" in ud
    assert "docker" not in ud.split("LLMFLEET_APPLY_EOF")[0].split("<<")[0]
    with pytest.raises(ValueError, match="allowed head, worker"):
        launcher_user_data("gpu", "us-east-1", "/x")


def test_pack_is_deterministic():
    assert pack_script("a") == pack_script("a") and unpack_script(pack_script("é\n")) == "é\n"
    assert script_digest("a") != script_digest("b")


def _bash_view(script: str, tmp_path, name: str) -> str:
    """The script as bash itself parses it: wrapped in a function, printed by `declare -f`
    (bash keeps every command and here-document body and drops the comments)."""
    f = tmp_path / name
    f.write_text("__node() {\n" + script + "\n}\n")
    return subprocess.run(
        ["bash", "-c", 'source "$1" && declare -f __node', "_", str(f)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize("name", ["user_data_head.sh", "user_data_worker.sh"])
def test_stripping_comments_changes_no_command(name, tmp_path):
    """The packed script loses its comment lines only: bash parses both to the same commands."""
    from infra.boot.node_apply import strip_comments
    from tests.snapshot import SNAP

    script = (SNAP / name).read_text()
    stripped = strip_comments(script)
    assert len(stripped) < 0.9 * len(script)  # the comments are gone...
    assert stripped.startswith("#!/bin/bash\n")
    # ... and nothing else: the same commands and here-document bodies
    assert _bash_view(stripped, tmp_path, "s.sh") == _bash_view(script, tmp_path, "o.sh")


def test_stripping_keeps_here_documents_and_drops_only_comment_lines():
    from infra.boot.node_apply import strip_comments

    script = (
        "#!/bin/bash\n# a comment\n  # an indented one\necho a # trailing stays\n"
        "cat > /etc/x.service <<'EOF'\n# data, not a comment\n[Unit]\nEOF\n"
        'cat <<-"PY"\n#!/usr/bin/env python3\nPY\n'
        'read -r x <<< "$y"\n# after a here-string\n'
    )
    assert strip_comments(script) == (
        "#!/bin/bash\necho a # trailing stays\n"
        "cat > /etc/x.service <<'EOF'\n# data, not a comment\n[Unit]\nEOF\n"
        'cat <<-"PY"\n#!/usr/bin/env python3\nPY\n'
        'read -r x <<< "$y"\n'
    )
