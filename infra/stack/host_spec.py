"""One host you own (llmfleet:provider = existing): an entry of llmfleet:hosts."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.catalog import load_catalog
from infra.stack import suggest

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
GPU_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The key types OpenSSH's ssh-keyscan reports (`ssh -Q key`, minus certificates).
HOST_KEY_TYPES = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)  # fmt: skip
HOST_KEY_ALLOWED = (
    "allowed: the host's SSH public key as `TYPE BASE64` (TYPE one of " + ", ".join(HOST_KEY_TYPES) + "): "
    "ssh-keyscan -t ed25519 ADDRESS, or record every host's with llmfleet hosts trust --stack STACK"
)


def parse_host_key(v: str) -> str:
    """`TYPE BASE64` whose base64 blob is an SSH key of that TYPE (the wire format starts with
    the type's name); ValueError saying what is allowed otherwise."""
    kind, _, blob = v.strip().partition(" ")
    try:
        raw = base64.b64decode(blob, validate=True)
        (n,) = struct.unpack(">I", raw[:4])
        ok = kind in HOST_KEY_TYPES and raw[4 : 4 + n] == kind.encode() and len(raw) > 4 + n
    except (binascii.Error, struct.error, ValueError):
        ok = False
    if not ok or " " in blob:
        raise ValueError(HOST_KEY_ALLOWED)
    return f"{kind} {blob}"


def is_ipv4(v: str) -> bool:
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
    # The host's SSH public key ("ssh-ed25519 AAAA..."). Required (config_rules.check_hosts):
    # without it pulumi-command would accept any key, and a man in the middle gets the tokens
    # the bootstrap sends on stdin.
    host_key: str | None = Field(default=None, alias="hostKey")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not HOST_RE.fullmatch(v):
            raise ValueError("allowed: an IPv4 address or a DNS name")
        return v

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not USER_RE.fullmatch(v):
            raise ValueError("allowed: a Unix user name such as ubuntu")
        return v

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, v: str | None) -> str | None:
        """GPU ids match ignoring case, as --gpu and llmfleet:gpu do ("l20" is L20). An unknown
        one stays as written: the hosts check names its entry and the allowed ids."""
        if v is None:
            return None
        if not GPU_MODEL_RE.fullmatch(v):
            raise ValueError(f"allowed: {', '.join(load_catalog().gpus)}")
        return suggest.canonical(v, load_catalog().gpus) or v

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        return None if v is None or v == "" else parse_host_key(v)

    @field_validator("private_ip")
    @classmethod
    def _private_ip(cls, v: str | None) -> str | None:
        if v is not None and not is_ipv4(v):
            raise ValueError("allowed: an IPv4 address")
        return v

    @property
    def ray_ip(self) -> str | None:
        """The IP Ray binds on this host: privateIp, else the address when it is an IPv4."""
        return self.private_ip or (self.address if is_ipv4(self.address) else None)
