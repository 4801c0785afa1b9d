"""`llmfleet init` and the project found from the working directory (issue #30, points 1-2).

The installed-wheel run of the same commands is tests/test_wheel.py (`make wheel-test`)."""

from __future__ import annotations

import shutil
import sys

import pytest
import yaml
from typer.testing import CliRunner

from infra.catalog import load_catalog
from infra.cli import app
from infra.commands import init as init_cmd
from infra.components.image import image_tag
from infra.constants import RAY_VERSION, REPO_ROOT, node_image_context
from infra.program.offline import capture
from infra.stack.config import ConfigError, load_stack_config
from infra.stack.files import load_config, project_defaults, project_root
from infra.stack.resolve import resolve

RUNNER = CliRunner()


def run(*args: str, input: str | None = None):
    return RUNNER.invoke(app, list(args), input=input, env={"COLUMNS": "200"})


def one_line_error(result, *needles: str) -> str:
    err = result.stderr.strip()
    assert result.exit_code == 2, result.output
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    for n in needles:
        assert n in err, err
    return err


# --- the project is where Pulumi.yaml is ----------------------------------------------------------


def test_project_is_the_nearest_directory_with_pulumi_yaml(tmp_path):
    deep = tmp_path / "p" / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "p" / "Pulumi.yaml").write_text("name: llmfleet\n")
    assert project_root(deep) == tmp_path / "p"
    assert project_root(tmp_path / "p") == tmp_path / "p"
    # the checkout is a project like any other: run from its root or below it
    assert project_root(REPO_ROOT / "infra" / "stack") == REPO_ROOT
    with pytest.raises(
        ConfigError, match=r"^project: no Pulumi.yaml in .* or any directory above it; allowed"
    ):
        project_root(tmp_path)


def test_outside_a_project_every_stack_command_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["preview", "--stack", "prod"], ["cost", "--stack", "prod"], ["policy", "--stack", "prod"]):
        one_line_error(run(*argv), "no Pulumi.yaml in", "llmfleet init DIR")


def test_a_pulumi_yaml_of_another_project_is_refused(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: other\nruntime: python\n")
    with pytest.raises(
        ConfigError,
        match=r"name 'other': the program reads the llmfleet: config namespace; allowed: llmfleet",
    ):
        project_defaults(tmp_path)


# --- init ---------------------------------------------------------------------------------------


def test_init_writes_a_project_that_preview_and_cost_run_in(tmp_path, monkeypatch):
    proj = tmp_path / "p"
    result = run("init", str(proj), "--model", "deepseek-r1", "--gpu", "L40S")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(proj)) for p in proj.rglob("*") if p.is_file()) == [
        "Pulumi.yaml",
        "__main__.py",
        "stacks/Pulumi.dev.yaml",
    ]
    assert "deepseek-r1 on 3 x g6e.48xlarge (8x L40S)" in result.stdout

    root = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    made = yaml.safe_load((proj / "Pulumi.yaml").read_text())
    # the checkout's typed config block and program entry; Pulumi's language host runs the
    # python llmfleet is installed in; `template:` is for `pulumi new`, not for a project
    assert made["config"] == root["config"] and made["name"] == "llmfleet" and "template" not in made
    assert made["runtime"]["options"]["virtualenv"] == sys.prefix
    assert {k: v for k, v in made.items() if k not in ("runtime", "template")} == {
        k: v for k, v in root.items() if k not in ("runtime", "template")
    }
    assert (proj / "__main__.py").read_text() == (REPO_ROOT / "__main__.py").read_text()
    stack = yaml.safe_load((proj / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    assert stack["llmfleet:model"] == "deepseek-r1" and stack["llmfleet:gpuInstanceType"] == "g6e.48xlarge"

    # the commands find it from a directory inside it, and run the project's own __main__.py
    (proj / "sub").mkdir()
    monkeypatch.chdir(proj / "sub")
    assert load_config("dev").model == "deepseek-r1"
    cap = capture("dev")
    assert cap.outputs["cluster_name"] == "llmfleet-dev"
    # the node image is the checkout's (its context hashed, the stack's base image)
    tag = image_tag(REPO_ROOT, {"BASE_IMAGE": cap.config.base_image, "RAY_VERSION": RAY_VERSION})
    assert cap.named("node-image")["inputs"]["tags"][0].endswith(f":{tag}")


def test_init_asks_for_model_and_gpu_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(init_cmd, "interactive", lambda: True)
    result = run(
        "init", str(tmp_path / "p"), "--stack", "small", input="qwen-7b\ndeepseek-r1-distill-qwen-7b\na10g\n"
    )
    assert result.exit_code == 0, result.output
    # a value that is not an id is asked again, with the near miss
    assert "'qwen-7b': did you mean deepseek-r1-distill-qwen-7b? allowed:" in result.stderr
    cfg = load_config("small", project_dir=tmp_path / "p")
    # the catalog's EC2 type with the most A10Gs (8x L4 on g6.48xlarge would be TP 8, which 28 heads refuse)
    most = max((i for i in load_catalog().instances.values() if i.gpu == "A10G"), key=lambda i: i.gpu_count)
    assert (cfg.model, cfg.gpu_instance_type) == ("deepseek-r1-distill-qwen-7b", most.name)
    assert resolve(cfg).workers >= 1


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--model", "r1-distil", "--gpu", "L40S"],
            ["--model: 'r1-distil' is not a known model", "allowed: deepseek-r1"],
        ),
        (["--model", "deepseek-r1", "--gpu", "L40"], ["--gpu: 'L40' is not a known GPU; did you mean L40S?"]),
        (
            ["--model", "deepseek-r1", "--gpu", "L20"],
            ["--gpu 'L20': no AWS instance type in the catalog has it; allowed: L40S"],
        ),
        (
            ["--model", "deepseek-r1", "--gpu", "L40S", "--stack", "../x"],
            ["--stack '../x': not a stack name"],
        ),
        (["--model", "deepseek-r1", "--gpu", "L40S", "--region", "mars-1"], ["aws:region", "mars-1"]),
        (["--gpu", "L40S"], ["--model: required when stdin is not a terminal; allowed: deepseek-r1"]),
        (["--model", "deepseek-r1"], ["--gpu: required when stdin is not a terminal; allowed: L40S"]),
        # the planner is asked before anything is written: 671B in FP8 cannot sit on 1x A10G hosts
        (
            ["--model", "deepseek-r1", "--gpu", "A10G"],
            ["--gpu 'A10G': deepseek-r1 does not fit on g5.", "plan --compare"],
        ),
    ],
)
def test_init_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needles):
    one_line_error(run("init", str(tmp_path / "p"), *args), *needles)
    assert not (tmp_path / "p" / "Pulumi.yaml").exists()


def test_init_refuses_a_stack_name_that_would_write_outside_the_project(tmp_path):
    """The stack name becomes stacks/Pulumi.<name>.yaml, written (to a scratch copy first) before
    the config model sees it: init's own check must refuse a name that climbs out."""
    stack = "/".join([".."] * 16) + str(tmp_path / "escaped")
    one_line_error(run("init", str(tmp_path / "p"), "-m", "deepseek-r1", "-g", "L40S", "--stack", stack),
                   f"--stack {stack!r}: not a stack name")  # fmt: skip
    assert not (tmp_path / "escaped.yaml").exists() and not (tmp_path / "p").exists()
    one_line_error(run("init", str(tmp_path / "p"), "-m", "deepseek-r1", "-g", "L40S", "--stack", "dev\n"),
                   "--stack 'dev\\n': not a stack name; allowed: 1-100 letters")  # fmt: skip


def test_init_never_overwrites_without_force(tmp_path):
    proj = tmp_path / "p"
    assert run("init", str(proj), "-m", "deepseek-r1", "-g", "L40S").exit_code == 0
    (proj / "stacks" / "Pulumi.dev.yaml").write_text("config: {}\n")
    one_line_error(run("init", str(proj), "-m", "deepseek-r1", "-g", "L40S"), "Pulumi.yaml exists", "--force")
    assert (proj / "stacks" / "Pulumi.dev.yaml").read_text() == "config: {}\n"
    assert run("init", str(proj), "-m", "deepseek-r1", "-g", "H100", "--force").exit_code == 0
    assert load_config("dev", project_dir=proj).gpu_instance_type == "p5.48xlarge"


# --- the `pulumi new` template section and the image context -------------------------------------


def test_pulumi_new_template_asks_for_declared_keys_with_valid_defaults():
    root = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    tpl = root["template"]
    assert tpl["description"] and tpl["config"]
    raw = dict(project_defaults(REPO_ROOT))
    for key, decl in tpl["config"].items():
        ns, _, name = key.partition(":")
        assert ns == "aws" or name in root["config"], f"template key {key} is not declared in config"
        assert decl["description"]
        raw[key] = str(decl["default"])
    cfg = load_stack_config(raw, "new")  # what `pulumi new` writes with every default accepted
    assert resolve(cfg).plan.fits


def test_node_image_context_is_the_packaged_copy_when_installed(tmp_path, monkeypatch):
    """A wheel carries images/ + ray_cluster/ under infra/_node_context; it hashes to the
    checkout's tag (tests/test_wheel.py checks the real wheel)."""
    args = {"BASE_IMAGE": "b", "RAY_VERSION": RAY_VERSION}
    assert node_image_context() == REPO_ROOT
    ctx = tmp_path / "_node_context"
    for part in ("images", "ray_cluster"):
        shutil.copytree(REPO_ROOT / part, ctx / part, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr("infra.constants.PACKAGED_NODE_CONTEXT", ctx)
    assert node_image_context() == ctx
    assert image_tag(ctx, args) == image_tag(REPO_ROOT, args)
    (ctx / "ray_cluster" / "node.py").write_text("# edited\n")
    assert image_tag(ctx, args) != image_tag(REPO_ROOT, args)


# --- the extras: one line when a command needs what a plain install leaves out --------------------


@pytest.mark.parametrize(
    ("missing", "argv", "needle"),
    [
        (
            "pulumi_policy",
            ["policy", "--stack", "prod"],
            "policy pack: pulumi-policy is not installed; allowed: the policy extra: pip install 'llmfleet-iac[policy]'",
        ),
        ("vllm", ["local", "up", "--hosts", "2"], "on Python 3.11: pip install 'llmfleet-iac[local]'"),
    ],
)
def test_a_command_needing_an_extra_says_which_in_one_line(monkeypatch, missing, argv, needle):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    one_line_error(run(*argv), needle)
