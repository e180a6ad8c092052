"""PROXY protocol headers, versions 1 and 2 (sans-I/O)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailslot.proxyproto import (
    MAX_HEADER,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_header,
)
from tests.helpers.proxy import v1, v2, v2_proxy


@pytest.mark.parametrize(
    ("line", "source"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 110\r\n", "203.0.113.7"),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 995\r\n", "2001:db8::7"),
        (b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:192.0.2.1 1 110\r\n", "203.0.113.7"),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    ],
)
def test_version_1(line: bytes, source: str | None) -> None:
    assert parse_header(line + b"USER x\r\n") == ProxyHeader(source, len(line))


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a field missing
        b"PROXY TCP5 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.999 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 01 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n",
        b"PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 \xff.0.113.7 192.0.2.1 1 2\r\n",
        b"USER alice\r\n",
        b"\r\n\r\n\x00\r\nQUIZ\n" + bytes(8),
    ],
)
def test_bad_headers_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(line)


def test_version_1_longer_than_107_octets_is_refused() -> None:
    assert parse_header(b"PROXY TCP4 " + b"1" * 90) is None  # could still end
    with pytest.raises(ProxyHeaderError, match="107"):
        parse_header(b"PROXY TCP4 " + b"1" * 96 + b"\r\n")


def test_version_2_addresses_and_tlvs() -> None:
    header = v2_proxy("203.0.113.7", tlvs=b"\x04\x00\x02ab")  # a NOOP TLV, skipped
    assert parse_header(header + b"\x16\x03\x01") == ProxyHeader("203.0.113.7", len(header))
    header = v2_proxy("2001:db8::7")
    assert parse_header(header) == ProxyHeader("2001:db8::7", len(header))
    assert parse_header(v2_proxy("::ffff:198.51.100.2")) == ProxyHeader("198.51.100.2", 52)


def test_version_2_local_and_other_families_keep_the_peer() -> None:
    assert parse_header(v2(0, 0x00, b"")) == ProxyHeader(None, 16)  # health check
    assert parse_header(v2(0, 0x11, bytes(12))) == ProxyHeader(None, 28)
    assert parse_header(v2(1, 0x12, bytes(12))) == ProxyHeader(None, 28)  # UDP
    assert parse_header(v2(1, 0x31, bytes(216))) == ProxyHeader(None, 232)  # unix


@pytest.mark.parametrize(
    "header",
    [
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 frame
        v2(2, 0x11, bytes(12)),  # unknown command
        v2(1, 0x11, bytes(11)),  # address block cut short
        v2(1, 0x21, bytes(35)),
        V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER),  # too long
    ],
)
def test_bad_version_2_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(header)


def test_every_prefix_of_a_header_asks_for_more() -> None:
    for header in (v1("203.0.113.7"), v2_proxy("203.0.113.7")):
        for cut in range(len(header)):
            assert parse_header(header[:cut]) is None, cut
        assert parse_header(header) == ProxyHeader("203.0.113.7", len(header))


@given(st.binary(max_size=300))
def test_arbitrary_input_never_raises_anything_else(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyHeaderError:
        return
    assert header is None or 0 < header.length <= len(data)
