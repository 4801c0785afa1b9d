"""One host you own (llmfleet:provider = existing): an entry of llmfleet:hosts."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.catalog import load_catalog
from infra.stack import suggest

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _is_ipv4(v: str) -> bool:
    try:
        return ipaddress.ip_address(v).version == 4
    except ValueError:
        return False


class HostSpec(BaseModel):
    """One existing host (llmfleet:provider = existing)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    address: str = Field(min_length=1)
    ssh_user: str = Field(default="ubuntu", alias="sshUser", min_length=1)
    role: Literal["head", "worker"]
    gpu_model: str | None = Field(default="L20", alias="gpuModel")
    gpu_count: int = Field(default=8, alias="gpuCount", ge=0)
    private_ip: str | None = Field(default=None, alias="privateIp")
    # The host's SSH public key ("ssh-ed25519 AAAA..."); unset = not verified (pulumi-command).
    host_key: str | None = Field(default=None, alias="hostKey")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not HOST_RE.match(v):
            raise ValueError("allowed: an IPv4 address or a DNS name")
        return v

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_RE.match(v):
            raise ValueError("allowed: a Unix user name such as ubuntu")
        return v

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, v: str | None) -> str | None:
        """GPU ids match ignoring case, as --gpu and llmfleet:gpu do ("l20" is L20). An unknown
        one stays as written: the hosts check names its entry and the allowed ids."""
        if v is None:
            return None
        return suggest.canonical(v, load_catalog().gpus) or v

    @field_validator("private_ip")
    @classmethod
    def _private_ip(cls, v: str | None) -> str | None:
        if v is not None and not _is_ipv4(v):
            raise ValueError("allowed: an IPv4 address")
        return v

    @property
    def ray_ip(self) -> str | None:
        """The IP Ray binds on this host: privateIp, else the address when it is an IPv4."""
        return self.private_ip or (self.address if _is_ipv4(self.address) else None)
