"""wire.py: bounded line reader, normalisation, dot-stuffing, sizes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot import wire
from mailslot.pop3.apop import apop_digest, apop_matches
from mailslot.wire import LINE_TOO_LONG, DotStuffer, LineReader, normalise, wire_size


def read_all(reader: LineReader) -> list[object]:
    lines: list[object] = []
    while (line := reader.next_line()) is not None:
        lines.append(line)
    return lines


def feed_three_ways(data: bytes, limit: int = 20) -> list[list[object]]:
    """Whole, one byte at a time, and with trailing data (h11's habit)."""
    results = []
    for mode in ("whole", "bytes"):
        reader = LineReader(limit)
        got: list[object] = []
        if mode == "whole":
            reader.feed(data)
            got += read_all(reader)
        else:
            for i in range(len(data)):
                reader.feed(data[i : i + 1])
                got += read_all(reader)
        results.append(got)
    reader = LineReader(limit)
    reader.feed(data + b"TRAILING")
    results.append(read_all(reader))
    return results


def test_line_reader_splits_crlf_and_lf() -> None:
    for got in feed_three_ways(b"ONE\r\nTWO\nTHREE\r\n"):
        assert got == [b"ONE", b"TWO", b"THREE"]


def test_line_reader_overlong_once_then_resync() -> None:
    for got in feed_three_ways(b"A" * 50 + b"\r\nOK\r\n"):
        assert got == [LINE_TOO_LONG, b"OK"]


def test_line_reader_limit_includes_crlf() -> None:
    for got in feed_three_ways(b"x" * 18 + b"\r\n" + b"y" * 19 + b"\r\n"):
        assert got == [b"x" * 18, LINE_TOO_LONG]


def test_line_reader_never_buffers_more_than_limit() -> None:
    reader = LineReader(255)
    for _ in range(100):
        reader.feed(b"z" * 10_000)
        read_all(reader)
        assert reader.buffered <= 255


def test_line_reader_clear_returns_pending() -> None:
    reader = LineReader(255)
    reader.feed(b"STLS\r\nCAPA\r\n")
    assert reader.next_line() == b"STLS"
    assert reader.clear() == b"CAPA\r\n"
    assert reader.next_line() is None


@pytest.mark.parametrize(
    ("stored", "size"),
    [
        (b"", 0),
        (b"a\nb", 6),
        (b"a\r\nb\r\n", 6),
        (b"a\rb\r", 6),
        (b"\n", 2),
        (b"\r\n\r\n", 4),
        (b".\n", 3),
    ],
)
def test_wire_size(stored: bytes, size: int) -> None:
    assert wire_size([stored]) == size
    assert wire_size([stored[i : i + 1] for i in range(len(stored))]) == size


def encode(message: bytes, chunk: int, top: int | None = None) -> bytes:
    stuffer = DotStuffer(top)
    parts = [stuffer.encode(message[i : i + chunk]) for i in range(0, len(message), chunk)]
    return b"".join(parts) + stuffer.finish()


def test_dot_stuffing() -> None:
    assert encode(b".a\n..b\nc.\n.\n", 100) == b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"
    assert encode(b"", 1) == b".\r\n"
    assert encode(b"no newline", 3) == b"no newline\r\n.\r\n"


def test_cr_split_across_chunks_is_one_line_end() -> None:
    assert encode(b"a\r\nb", 2) == b"a\r\nb\r\n.\r\n"
    assert encode(b"a\r", 2) == b"a\r\n.\r\n"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=17))
def test_stuffing_is_chunking_invariant(message: bytes, chunk: int) -> None:
    whole = encode(message, max(1, len(message)))
    assert encode(message, chunk) == whole
    assert whole.endswith(b".\r\n")
    lines = whole.split(b"\r\n")
    assert lines[-1] == b"" and lines[-2] == b"."
    for line in lines[:-2]:
        assert b"\r" not in line and b"\n" not in line
        assert not line.startswith(b".") or line.startswith(b"..") or line == b""
    size = sum(len(line[1:] if line.startswith(b".") else line) + 2 for line in lines[:-2])
    assert size == wire_size([message])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=8
    ),
    st.lists(
        st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=8
    ),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=1, max_value=9),
)
def test_top_sends_headers_and_n_lines(
    headers: list[bytes], body: list[bytes], n: int, chunk: int
) -> None:
    headers = [h or b"X" for h in headers]
    message = b"\n".join([*headers, b"", *body]) + b"\n"
    got = encode(message, chunk, top=n)
    expected = b"\n".join([*headers, b"", *body[:n]]) + b"\n"
    assert got == encode(expected, 1000)


def test_normalise() -> None:
    assert normalise(b"a\r\nb\rc\n") == b"a\nb\nc\n"


def test_apop_rfc1939_vector() -> None:
    """RFC 1939 §7 example."""
    timestamp = "<1896.697170952@dbc.mtview.ca.us>"
    assert apop_digest(timestamp, "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    assert apop_matches(timestamp, "tanstaaf", "C4C9334BAC560ECC979E58001B3E22FB")
    assert not apop_matches(timestamp, "tanstaaF", "c4c9334bac560ecc979e58001b3e22fb")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from([b"\r\n", b"\r\n.", b".", b"a", b"\r", b"\n"]), max_size=300).map(
        b"".join
    )
)
def test_stuffing_cuts_agree_with_replace(data: bytes) -> None:
    """The reverse-search stuffing, with few dotted lines or many."""
    assert wire._stuff(data) == data.replace(b"\r\n.", b"\r\n..")
