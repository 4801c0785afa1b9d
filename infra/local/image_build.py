"""Build the CPU variant of the node image and push it to a local registry by digest.

The same images/Dockerfile as production, FROM the CPU base (images/cpu-base/build.sh) instead
of vLLM's CUDA image. Both images are content-addressed:
- the base's tag is the hash of images/cpu-base/ (its recipe and locked requirements); a tarball
  of it (`docker save`, zstd) is kept in the cache dir, and used when present, never needed;
- the node's tag is `infra.components.image.image_tag` over the same context (images/ +
  ray_cluster/) and build args, exactly as the Pulumi program tags the production image.

The pushed digest cannot equal the production one: the base differs (CUDA vLLM vs the CPU base)
and so does every layer above it. See README ("The node image on CPU").

    python -m infra.local.image_build [--registry HOST:PORT] [--keep]   (`make image`)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.constants import RAY_VERSION, REPO_ROOT
from infra.image_context import image_tag
from infra.local import docker as dk

BASE_DIR = REPO_ROOT / "images" / "cpu-base"
REPOSITORY = "llmfleet-node"
CACHE_ENV = "LLMFLEET_IMAGE_CACHE"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmfleet" / "images"
    return Path(os.environ.get(CACHE_ENV, default))


def base_tag(root: Path = REPO_ROOT) -> str:
    """llmfleet-cpu-base:<hash of images/cpu-base/>: a recipe change makes a new base."""
    h = hashlib.sha256()
    for f in sorted((root / "images" / "cpu-base").rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return f"llmfleet-cpu-base:{h.hexdigest()[:16]}"


def build_args(base: str) -> dict[str, str]:
    return {"BASE_IMAGE": base, "RAY_VERSION": RAY_VERSION, "PIP_NO_INDEX": "1"}


def node_tag(base: str, root: Path = REPO_ROOT) -> str:
    return image_tag(root, build_args(base))


def uv_binary() -> str:
    """The uv the project installs with (its cache holds the locked wheels), else uv on PATH."""
    for cand in (os.environ.get("UV"), str(REPO_ROOT / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise dk.DockerError("uv not found: run `make setup` (it installs .tools/bin/uv)")


def _have_image(ref: str) -> bool:
    return dk.docker("image", "inspect", ref, check=False).returncode == 0


def ensure_base(log=print) -> str:
    """The CPU base in the daemon: already there, else loaded from the cache, else built (and cached)."""
    tag = base_tag()
    if _have_image(tag):
        log(f"cpu base {tag}: present")
        return tag
    tarball = cache_dir() / f"{tag.replace(':', '-')}.tar.zst"
    if tarball.exists() and shutil.which("zstd"):
        t = time.monotonic()
        load = f"zstd -dc {tarball} | {dk.DOCKER} load"
        if subprocess.run(load, shell=True, capture_output=True).returncode == 0 and _have_image(tag):
            log(f"cpu base {tag}: loaded from {tarball} in {time.monotonic() - t:.0f} s")
            return tag
        log(f"cpu base {tag}: cache {tarball} unusable; building")
    t = time.monotonic()
    env = {**os.environ, "DOCKER": dk.DOCKER, "UV": uv_binary()}
    r = subprocess.run(["bash", str(BASE_DIR / "build.sh"), tag], env=env)
    if r.returncode != 0:
        raise dk.DockerError(f"images/cpu-base/build.sh failed (exit {r.returncode})")
    log(f"cpu base {tag}: built in {time.monotonic() - t:.0f} s")
    if os.environ.get("LLMFLEET_IMAGE_CACHE_SAVE", "1") == "1" and shutil.which("zstd"):
        _save(tag, tarball, log)
    return tag


def _save(tag: str, tarball: Path, log) -> None:
    t = time.monotonic()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    for old in tarball.parent.glob("llmfleet-cpu-base-*.tar.zst"):
        old.unlink()  # one base per machine is enough
    part = tarball.with_suffix(".part")
    save = f"{dk.DOCKER} save {tag} | zstd -q -T0 -3 -o {part}"
    if subprocess.run(save, shell=True).returncode == 0:
        part.rename(tarball)
        log(
            f"cpu base cached: {tarball} ({tarball.stat().st_size >> 20} MiB) in {time.monotonic() - t:.0f} s"
        )
    else:
        part.unlink(missing_ok=True)


@dataclass
class Built:
    base: str
    local: str  # llmfleet-node:<ctx tag>
    ref: str  # <registry>/llmfleet-node@sha256:...
    tag: str


def build_node(base: str, log=print) -> str:
    """images/Dockerfile on the CPU base, offline; returns the local name:tag."""
    tag = node_tag(base)
    local = f"{REPOSITORY}:{tag}"
    args = [f"--build-arg={k}={v}" for k, v in build_args(base).items()]
    t = time.monotonic()
    dk.docker(
        "build", "--network", "none", "--progress", "plain", "-f", str(REPO_ROOT / "images" / "Dockerfile"),
        *args, "--label", f"llmfleet.context={tag}", "-t", local, str(REPO_ROOT), capture=False,
    )  # fmt: skip
    log(f"node image {local}: built in {time.monotonic() - t:.0f} s")
    return local


def push(local: str, registry: str) -> str:
    """Tag into the registry, push, and return repo@sha256:... as the registry reports it."""
    tag = local.split(":", 1)[1]
    remote = f"{registry}/{REPOSITORY}:{tag}"
    dk.docker("tag", local, remote)
    out = dk.docker("push", remote).stdout
    digest = next((w for ln in out.splitlines() for w in ln.split() if w.startswith("sha256:")), None)
    if digest is None:
        raise dk.DockerError(f"docker push {remote}: no digest in its output")
    return f"{registry}/{REPOSITORY}@{digest}"


def build_and_push(registry: str, log=print) -> Built:
    base = ensure_base(log)
    local = build_node(base, log)
    t = time.monotonic()
    ref = push(local, registry)
    log(f"pushed {ref} in {time.monotonic() - t:.0f} s")
    return Built(base=base, local=local, ref=ref, tag=local.split(":", 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m infra.local.image_build", description=(__doc__ or "").partition("\n")[0]
    )
    p.add_argument("--registry", help="push here (HOST:PORT); default: start docker-registry on 127.0.0.1")
    p.add_argument("--stop", action="store_true", help="stop the dockerd and registry this started")
    a = p.parse_args(argv)
    if a.stop:
        done = dk.stop_started(cache_dir() / "registry")
        print("stopped: " + (", ".join(done) if done else "nothing (none was started by make image)"))
        return 0
    missing = dk.missing_tools()
    if missing:
        print(
            f"error: missing Debian packages: {' '.join(missing)} (run `make system-deps` as root)",
            file=sys.stderr,
        )
        return 2
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731  progress on stderr, the ref on stdout
    try:
        dk.ensure_daemon(say)
        registry = a.registry or dk.ensure_registry(cache_dir() / "registry", say)
        built = build_and_push(registry, say)
    except dk.DockerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(built.ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
