"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-I/O.

A load balancer in front of the server opens each connection with a header
naming the client's address.  ``parse_header`` reads it from the first
octets of a connection: it returns ``None`` while the header is incomplete,
a ``ProxyHeader`` once it is whole, or raises ``ProxyHeaderError``.

Only the source address is used.  A ``LOCAL`` command (version 2, the
balancer's own health check) and ``UNKNOWN`` (version 1) carry none: the
connection keeps the balancer's address.  Version 2 TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["MAX_HEADER", "ProxyHeader", "ProxyHeaderError", "parse_header"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest version 1 line, CRLF included
_V2_FIXED = 16
_V2_MAX_PAYLOAD = 1024  # addresses (at most 216) plus TLVs a balancer might add
MAX_HEADER = _V2_FIXED + _V2_MAX_PAYLOAD

_FAMILIES = {0x11: (4, 12), 0x21: (16, 36)}  # TCP over IPv4 / IPv6: address size, block


class ProxyHeaderError(ValueError):
    """Not a PROXY protocol header, or a malformed one."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    source: str | None  # the client's address; None: keep the connection's own
    length: int  # octets of the header; what follows is the client's


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; ``None`` if more is needed."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    if data[: len(_V1_PREFIX)] == _V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("version 1 header longer than 107 octets")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return ProxyHeader(None, end + 2)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed version 1 header")
    version = 4 if fields[1] == b"TCP4" else 6
    try:
        source = ipaddress.ip_address(fields[2].decode("ascii"))
        destination = ipaddress.ip_address(fields[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("bad address in version 1 header") from None
    if source.version != version or destination.version != version:
        raise ProxyHeaderError("address family does not match the protocol")
    for port in fields[4:]:
        # Decimal, no leading zero (the specification's own rule).
        if not port.isdigit() or int(port) > 65535 or (len(port) > 1 and port[0] == 0x30):
            raise ProxyHeaderError("bad port in version 1 header")
    return ProxyHeader(_text(source), end + 2)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family, payload = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if version_command >> 4 != 2:
        raise ProxyHeaderError("unsupported PROXY protocol version")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError("unknown version 2 command")
    if payload > _V2_MAX_PAYLOAD:
        raise ProxyHeaderError("version 2 header too long")
    length = _V2_FIXED + payload
    if len(data) < length:
        return None
    if command == 0 or family not in _FAMILIES:
        # LOCAL (the balancer's own connection), or a family without an IP
        # source (UNSPEC, UDP, unix): keep the connection's own address.
        return ProxyHeader(None, length)
    size, block = _FAMILIES[family]
    if payload < block:
        raise ProxyHeaderError("version 2 address block too short")
    raw = data[_V2_FIXED : _V2_FIXED + size]
    source = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
    return ProxyHeader(_text(source), length)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An IPv4 client reached over IPv6 (``::ffff:a.b.c.d``) as IPv4, the
    form limits and logs know it by."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
