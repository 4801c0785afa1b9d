"""Which network interface a Ray node uses for NCCL/Gloo, and the env that pins it.

Stdlib only: this runs inside the production image (see ray_cluster/node.py).
The choice is a pure function over a list of interfaces; reading the list is a thin edge.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from dataclasses import dataclass
from typing import Any


class NicError(ValueError):
    """A one-line reason why no interface could be chosen."""


@dataclass(frozen=True)
class Iface:
    ifname: str
    ip: str  # IPv4 address
    prefixlen: int = 32
    kind: str = ""  # "veth", "bridge", ... when the reader knows it

    @property
    def loopback(self) -> bool:
        return self.ifname == "lo" or ipaddress.ip_address(self.ip).is_loopback


@dataclass(frozen=True)
class NicChoice:
    ifname: str
    ip: str


def parse_ip_addr_json(text: str) -> list[Iface]:
    """Parse `ip -j -d addr show` output into IPv4 interfaces (one row per address)."""
    out: list[Iface] = []
    links: list[dict[str, Any]] = json.loads(text or "[]")
    for link in links:
        info: dict[str, Any] = link.get("linkinfo") or {}
        kind = str(info.get("info_kind", ""))
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                out.append(Iface(link["ifname"], addr["local"], int(addr.get("prefixlen", 32)), kind))
    return out


def choose_nic(ifaces: list[Iface], ip: str | None = None, ifname: str | None = None) -> NicChoice:
    """Pick the interface for inter-node traffic.

    An explicit ifname wins; else the interface holding `ip`; else the first non-loopback IPv4
    interface. `lo` is chosen only when the given IP is itself a loopback address (the
    single-machine fallback), never when a routable IP was asked for.
    """
    names = sorted({i.ifname for i in ifaces})
    if ifname:
        held = [i for i in ifaces if i.ifname == ifname]
        if not held:
            raise NicError(f"--ifname {ifname!r} has no IPv4 address here; interfaces: {', '.join(names)}")
        if ip and ip not in {i.ip for i in held}:
            raise NicError(f"--ifname {ifname!r} does not hold IP {ip}; it holds {held[0].ip}")
        return NicChoice(ifname, ip or held[0].ip)
    if ip:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise NicError(f"IP {ip!r} is not an IPv4 address") from None
        holders = [i for i in ifaces if i.ip == ip]
        if not ipaddress.ip_address(ip).is_loopback:
            holders = [i for i in holders if not i.loopback]
        if not holders and ipaddress.ip_address(ip).is_loopback:
            return NicChoice("lo", ip)  # Linux routes all of 127/8 through lo
        if not holders:
            seen = ", ".join(f"{i.ifname}={i.ip}" for i in ifaces) or "none"
            raise NicError(f"no interface holds IP {ip}; seen: {seen}")
        return NicChoice(holders[0].ifname, ip)
    routable = [i for i in ifaces if not i.loopback]
    if not routable:
        raise NicError("no non-loopback IPv4 interface found; pass --ip or --ifname")
    return NicChoice(routable[0].ifname, routable[0].ip)


def read_interfaces() -> list[Iface]:
    """The host's IPv4 interfaces, from iproute2 (present in the image and on the hosts)."""
    try:
        text = subprocess.run(
            ["ip", "-j", "-d", "addr", "show"], check=True, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NicError(f"cannot list interfaces with `ip -j addr`: {e}") from None
    return parse_ip_addr_json(text)


def source_ip_towards(host: str, port: int = 6379) -> str:
    """The local IP the kernel would use to reach host (UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def node_env(choice: NicChoice) -> dict[str, str]:
    """Env that pins NCCL, Gloo and vLLM to the chosen NIC; `ray start` passes it to every worker."""
    return {
        "NCCL_SOCKET_IFNAME": choice.ifname,
        "GLOO_SOCKET_IFNAME": choice.ifname,
        "VLLM_HOST_IP": choice.ip,
    }
