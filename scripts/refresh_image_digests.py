"""Resolve each image of infra/catalog/images.yaml from its tag to its digest through the
registry's own HTTP API, and write the digests (and the date they were verified) into the file.

    .venv/bin/python scripts/refresh_image_digests.py [--check] [--only ID ...] [--file PATH]

What `docker buildx imagetools inspect` / `crane digest` do, in Python with httpx:
- HEAD /v2/<name>/manifests/<tag>, accepting the OCI index, Docker manifest list and both
  single-platform manifest types, so a multi-platform tag resolves to its index (the digest a
  `docker pull REPO:TAG` records, valid on every platform);
- the digest is the registry's Docker-Content-Digest header, else the sha256 of a GET's body;
- a 401 names the token service (WWW-Authenticate: Bearer realm=..., service=..., scope=...):
  an anonymous pull token is fetched from it and the request retried;
- Docker Hub names go to registry-1.docker.io (`library/` for official images); 127.0.0.1 and
  localhost registries (the docker-registry `make image` starts) are plain HTTP, others HTTPS.

--check rewrites nothing and exits 1 when a pinned digest is not what its tag resolves to now
(a moved tag, or a pin never verified). tests/test_refresh_image_digests.py runs the resolver
against a stand-in registry; tests/test_image_build.py against the local docker-registry.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import re
import sys
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOG = REPO_ROOT / "infra" / "catalog" / "images.yaml"
DOCKER_HUB = "registry-1.docker.io"
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class ResolveError(Exception):
    pass


def split_repository(repository: str) -> tuple[str, str]:
    """(registry host, repository name on it), as docker reads a reference."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, repository if rest else f"library/{repository}"


def _base_url(host: str) -> str:
    plain = host.split(":")[0] in ("127.0.0.1", "localhost")
    return f"{'http' if plain else 'https'}://{host}"


def _bearer(challenge: str) -> dict[str, str]:
    if not challenge.lower().startswith("bearer "):
        raise ResolveError(f"unsupported auth challenge: {challenge!r}")
    return dict(re.findall(r'(\w+)="([^"]*)"', challenge))


def resolve(repository: str, tag: str, client: httpx.Client) -> str:
    """The digest the registry serves for repository:tag."""
    host, name = split_repository(repository)
    url = f"{_base_url(host)}/v2/{name}/manifests/{tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    r = client.head(url, headers=headers)
    if r.status_code == 401:
        params = _bearer(r.headers.get("WWW-Authenticate", ""))
        realm = params.pop("realm", None)
        if not realm:
            raise ResolveError(f"{host}: 401 without a token realm")
        params.setdefault("scope", f"repository:{name}:pull")
        t = client.get(realm, params=params)
        if t.status_code != 200:
            raise ResolveError(f"{realm}: token request answered {t.status_code}")
        token = t.json().get("token") or t.json().get("access_token")
        headers["Authorization"] = f"Bearer {token}"
        r = client.head(url, headers=headers)
    if r.status_code != 200:
        raise ResolveError(f"{repository}:{tag}: HEAD {url} answered {r.status_code}")
    digest = r.headers.get("Docker-Content-Digest")
    if not digest:
        body = client.get(url, headers=headers)
        body.raise_for_status()
        digest = "sha256:" + hashlib.sha256(body.content).hexdigest()
    if not DIGEST_RE.match(digest):
        raise ResolveError(f"{repository}:{tag}: unexpected digest {digest!r}")
    return digest


def rewrite(text: str, image_id: str, digest: str, verified: str) -> str:
    """The catalog text with one row's digest and verified date replaced; comments kept."""
    blocks = re.split(r"(?m)^(?=- id: )", text)
    hits = [
        i for i, b in enumerate(blocks) if re.match(rf"- id: {re.escape(image_id)}\s*$", b.splitlines()[0])
    ]
    if len(hits) != 1:
        raise ResolveError(f"{image_id}: {len(hits)} rows with this id")
    b = blocks[hits[0]]
    b = re.sub(r"(?m)^(  digest: ).*$", rf"\g<1>{digest}", b, count=1)
    b = re.sub(r"(?m)^(  verified: ).*$", rf'\g<1>"{verified}"', b, count=1)
    blocks[hits[0]] = b
    return "".join(blocks)


def rows(text: str) -> list[dict]:
    import yaml

    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", type=Path, default=CATALOG)
    p.add_argument("--only", action="append", default=[], help="image id (repeatable); default: all")
    p.add_argument("--check", action="store_true", help="report differences, rewrite nothing")
    a = p.parse_args(argv)
    text = a.file.read_text()
    today = datetime.date.today().isoformat()
    stale = 0
    with httpx.Client(timeout=30, follow_redirects=True) as client:
        for row in rows(text):
            if a.only and row["id"] not in a.only:
                continue
            try:
                digest = resolve(row["repository"], row["tag"], client)
            except (ResolveError, httpx.HTTPError) as e:
                print(f"error: {row['id']}: {e}", file=sys.stderr)
                return 2
            same = digest == row.get("digest")
            stale += not same or not row.get("verified")
            print(
                f"{row['id']}: {row['repository']}:{row['tag']} -> {digest}" + ("" if same else " (changed)")
            )
            if not a.check:
                text = rewrite(text, row["id"], digest, today)
    if a.check:
        return 1 if stale else 0
    a.file.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
