"""A well-formed SSH host key for test host lists (llmfleet:hosts[*].hostKey is required).

Its private half was never kept: a test that connects uses its own sshd's key instead."""

from __future__ import annotations

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBJ4mvEhT0x2r0f7VN8sPvH4m4MLmU3cT9ypAyzS1xq6"


def keyed(*entries: dict) -> list[dict]:
    """The entries, each with HOST_KEY unless it names its own hostKey."""
    return [{"hostKey": HOST_KEY, **e} for e in entries]
