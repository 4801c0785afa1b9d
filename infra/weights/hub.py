"""`--from hf:ORG/NAME[@REVISION]`: a checkpoint from the Hugging Face hub, through
huggingface_hub (its cache, HF_HOME / HF_TOKEN / HF_ENDPOINT / HF_HUB_OFFLINE as usual).

config.json comes first, alone, so a checkpoint of the wrong architecture is refused before
hundreds of GiB download; the snapshot follows, then the full header check runs on it.
Every hub failure (offline, unreachable, gated, no such repo or revision) is one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "hf:"
# A revision is a branch, a tag or a commit; it reaches only the hub's API, never a shell or a path.
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


class HubError(ValueError):
    pass


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None

    @property
    def label(self) -> str:
        return PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_source(value: str) -> HubSource:
    """hf:ORG/NAME[@REVISION], the repo id checked by huggingface_hub's own validator."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, _, revision = value.removeprefix(PREFIX).partition("@")
    allowed = "allowed: hf:ORG/NAME or hf:ORG/NAME@REVISION (a branch, tag or commit)"
    if "/" not in repo_id:
        raise HubError(f"--from {value!r}: no organisation; {allowed}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--from {value!r}: {str(e).splitlines()[0]}; {allowed}") from None
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision):
        raise HubError(f"--from {value!r}: revision {revision!r}; {allowed}")
    return HubSource(repo_id, revision or None)


def _one_line(src: HubSource, e: Exception) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        why = "the repository is gated: accept its terms on the hub and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "no such repository (or it is private: set HF_TOKEN)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"no revision {src.revision!r}"
    elif isinstance(e, LocalEntryNotFoundError):
        # What huggingface_hub raises offline (HF_HUB_OFFLINE=1) or when the hub cannot be reached
        # and the file is not in the local cache.
        why = "the hub is unreachable (offline, or no network) and the files are not in the local cache"
    else:
        why = " ".join(str(e).split())[:200] or type(e).__name__
    return HubError(
        f"--from {src.label}: cannot download from the Hugging Face hub: {why}; "
        "download the checkpoint where the hub is reachable and pass --from DIR"
    )


def _hub_errors() -> tuple[type[Exception], ...]:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (HfHubHTTPError, LocalEntryNotFoundError, httpx.HTTPError, OSError, ValueError)


def _quiet() -> None:
    # huggingface_hub logs each retry of an unreachable hub as a warning ("Retrying in 8s"); the
    # command's answer is the one line below, after its retries.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def fetch_config(src: HubSource) -> dict[str, Any]:
    """config.json alone (a few KiB), for the check before the download."""
    from huggingface_hub import hf_hub_download

    _quiet()
    try:
        path = hf_hub_download(src.repo_id, "config.json", revision=src.revision)
        doc = json.loads(Path(path).read_bytes())
    except _hub_errors() as e:
        raise _one_line(src, e) from None
    if not isinstance(doc, dict):
        raise HubError(f"--from {src.label}: config.json is not a JSON object")
    return doc


def fetch_snapshot(src: HubSource) -> Path:
    """The whole repository in huggingface_hub's cache (resumed by it if interrupted)."""
    from huggingface_hub import snapshot_download

    _quiet()
    try:
        return Path(snapshot_download(src.repo_id, revision=src.revision))
    except _hub_errors() as e:
        raise _one_line(src, e) from None
