"""scripts/refresh_image_digests.py against a stand-in registry (httpx.MockTransport): the
distribution API's manifest HEAD, the anonymous bearer token dance, and the catalog rewrite.
tests/test_image_build.py runs the resolver against the real local docker-registry."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import httpx
import pytest
import yaml

from infra.catalog.images import IMAGES_FILE, load_images_from
from infra.constants import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "refresh_image_digests", REPO_ROOT / "scripts" / "refresh_image_digests.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rid = _load_script()
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("repository", "want"),
    [
        ("grafana/grafana", ("registry-1.docker.io", "grafana/grafana")),
        ("ubuntu", ("registry-1.docker.io", "library/ubuntu")),
        ("nvcr.io/nvidia/k8s/dcgm-exporter", ("nvcr.io", "nvidia/k8s/dcgm-exporter")),
        ("127.0.0.1:5000/llmfleet-node", ("127.0.0.1:5000", "llmfleet-node")),
        ("localhost/x", ("localhost", "x")),
    ],
)
def test_split_repository_reads_references_as_docker_does(repository, want):
    assert rid.split_repository(repository) == want


class Registry:
    """Docker Hub's shape: 401 + a Bearer challenge without a token, the digest header with one."""

    def __init__(self, digest: str | None = D1, body: bytes = b'{"schemaVersion": 2}'):
        self.digest, self.body, self.seen = digest, body, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, str(request.url), dict(request.headers)))
        if request.url.host == "auth.docker.io":
            assert request.url.params["scope"] == "repository:grafana/grafana:pull"
            assert request.url.params["service"] == "registry.docker.io"
            return httpx.Response(200, json={"token": "anon"})
        if request.headers.get("Authorization") != "Bearer anon":
            challenge = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:grafana/grafana:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        assert request.url.path == "/v2/grafana/grafana/manifests/11.2.0"
        accept = request.headers["Accept"]
        assert "application/vnd.oci.image.index.v1+json" in accept
        assert "application/vnd.docker.distribution.manifest.list.v2+json" in accept
        headers = {"Docker-Content-Digest": self.digest} if self.digest else {}
        return httpx.Response(200, headers=headers, content=self.body if request.method == "GET" else b"")


def test_resolve_follows_the_token_challenge_and_reads_the_digest_header():
    reg = Registry()
    with httpx.Client(transport=httpx.MockTransport(reg)) as c:
        assert rid.resolve("grafana/grafana", "11.2.0", c) == D1
    assert [m for m, *_ in reg.seen] == ["HEAD", "GET", "HEAD"]
    assert reg.seen[0][1].startswith("https://registry-1.docker.io/v2/")


def test_resolve_hashes_the_manifest_when_the_header_is_missing():
    reg = Registry(digest=None, body=b'{"manifests": []}')
    with httpx.Client(transport=httpx.MockTransport(reg)) as c:
        assert rid.resolve("grafana/grafana", "11.2.0", c) == "sha256:" + hashlib.sha256(reg.body).hexdigest()


def test_resolve_fails_on_a_missing_tag():
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404))) as c:
        with pytest.raises(rid.ResolveError, match="answered 404"):
            rid.resolve("127.0.0.1:5000/x", "nope", c)


def test_rewrite_changes_one_row_and_keeps_the_comments(tmp_path):
    text = IMAGES_FILE.read_text()
    out = rid.rewrite(text, "grafana", D2, "2026-12-06")
    before, after = yaml.safe_load(text), yaml.safe_load(out)
    changed = [(b["id"], a["digest"], a["verified"]) for b, a in zip(before, after, strict=True) if a != b]
    assert changed == [("grafana", D2, "2026-12-06")]
    assert out.splitlines()[:10] == text.splitlines()[:10]  # the header comment
    (tmp_path / "images.yaml").write_text(out)
    assert load_images_from(tmp_path / "images.yaml")["grafana"].digest == D2


def test_main_check_reports_unverified_pins_and_rewrites_nothing(tmp_path, monkeypatch, capsys):
    path = tmp_path / "images.yaml"
    path.write_text(IMAGES_FILE.read_text())
    pinned = {r["id"]: r["digest"] for r in yaml.safe_load(path.read_text())}
    monkeypatch.setattr(
        rid, "resolve", lambda repo, tag, client: pinned[next(k for k, v in ids.items() if v == repo)]
    )
    ids = {r["id"]: r["repository"] for r in yaml.safe_load(path.read_text())}
    assert rid.main(["--file", str(path), "--check"]) == 1  # same digests, but never verified
    assert path.read_text() == IMAGES_FILE.read_text()
    assert rid.main(["--file", str(path)]) == 0
    rows = yaml.safe_load(path.read_text())
    assert all(r["verified"] and r["digest"] == pinned[r["id"]] for r in rows)
    assert rid.main(["--file", str(path), "--check"]) == 0
    assert "grafana: grafana/grafana:11.2.0 -> sha256:" in capsys.readouterr().out
    json.dumps(rows)
