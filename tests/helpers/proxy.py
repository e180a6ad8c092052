"""PROXY protocol headers as a load balancer writes them."""

from __future__ import annotations

import ipaddress
import struct

from mailslot.proxyproto import V2_SIGNATURE


def v1(source: str, ports: tuple[int, int] = (40000, 110)) -> bytes:
    family, destination = ("TCP6", "2001:db8::1") if ":" in source else ("TCP4", "192.0.2.1")
    return f"PROXY {family} {source} {destination} {ports[0]} {ports[1]}\r\n".encode()


def v2(command: int, family: int, payload: bytes) -> bytes:
    """A version 2 header: command 0 LOCAL / 1 PROXY, family 0x11 TCP4, 0x21 TCP6..."""
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(payload)) + payload


def v2_proxy(source: str, destination: str | None = None, tlvs: bytes = b"") -> bytes:
    client = ipaddress.ip_address(source)
    server = ipaddress.ip_address(destination or ("192.0.2.1" if client.version == 4 else "::1"))
    ports = struct.pack("!HH", 40000, 995)
    family = 0x11 if client.version == 4 else 0x21
    return v2(1, family, client.packed + server.packed + ports + tlvs)
