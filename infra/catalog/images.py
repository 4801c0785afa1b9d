"""External container images, each pinned by digest (images.yaml beside this module).

`image_ref(id)` is the one way code names an upstream image: REPOSITORY:TAG@sha256:<digest>.
scripts/refresh_image_digests.py resolves the tags through the registries and rewrites the file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import Field

from infra.catalog import HERE, _load_rows, _Row

IMAGES_FILE = HERE / "images.yaml"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class ExternalImage(_Row):
    id: str
    repository: str = Field(pattern=r"^[a-z0-9][a-z0-9._/-]*$")  # registry host first unless Docker Hub
    tag: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    digest: str = Field(pattern=DIGEST_PATTERN)
    used_by: str
    digest_source: str
    verified: str | None = None  # the date scripts/refresh_image_digests.py resolved it

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}@{self.digest}"


def load_images_from(path: Path) -> dict[str, ExternalImage]:
    return _load_rows(path, ExternalImage, "id")


@cache
def load_images() -> dict[str, ExternalImage]:
    return load_images_from(IMAGES_FILE)


def image_ref(image_id: str) -> str:
    return load_images()[image_id].ref
