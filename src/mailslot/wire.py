"""Byte-level helpers shared by POP3 and LMTP: the bounded line reader, line-end
normalisation, dot-stuffing and un-stuffing, each working across chunk
boundaries.

Stored mail may use CRLF, bare LF or (rarely) bare CR line ends.  On the wire
every line ends in CRLF (RFC 1939 §3, RFC 5321 §2.3.8), so each of the three is
turned into CRLF, and a message whose last line lacks a line end gets one.  The
size a POP3 server reports (RFC 1939 §11) is the size of that normalised form,
before dot-stuffing: ``wire_size`` computes it.

All work is done with ``bytes.replace``/``bytes.count`` on whole chunks: no
Python-level loop per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

CRLF = b"\r\n"


class LineTooLong:
    """Marker returned by ``LineReader.next_line`` for a line over the limit."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG = LineTooLong()


class LineReader:
    """A bounded line splitter.

    ``feed`` appends bytes; ``next_line`` returns the next complete line without
    its line end (LF or CRLF), ``None`` when no complete line is buffered, or
    ``LINE_TOO_LONG`` once for a line longer than ``limit`` octets (line end
    included).  The rest of an overlong line is discarded up to and including
    its LF, so its tail is never returned as a line of its own.  The buffer
    never holds more than ``limit`` octets of an incomplete line.
    """

    __slots__ = ("_buffer", "_discarding", "_limit")

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> bytes:
        """Drop and return everything buffered (used after STLS)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._discarding = False
        return data

    def next_line(self) -> bytes | LineTooLong | None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", 0, self._limit if not self._discarding else None)
            if self._discarding:
                if end < 0:
                    buffer.clear()
                    return None
                del buffer[: end + 1]
                self._discarding = False
                continue
            if end < 0:
                if len(buffer) >= self._limit:
                    # No LF within the limit: the line is too long.  Drop it up
                    # to its LF, or all of it and the rest up to the next LF.
                    end = buffer.find(b"\n", self._limit)
                    if end < 0:
                        buffer.clear()
                        self._discarding = True
                    else:
                        del buffer[: end + 1]
                    return LINE_TOO_LONG
                return None
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            return line


def normalise(data: bytes) -> bytes:
    """CRLF, bare CR and bare LF all become LF (the internal form)."""
    if b"\r" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class _LineEnds:
    """Stateful CRLF/CR/LF → LF conversion across chunk boundaries."""

    __slots__ = ("_pending_cr",)

    def __init__(self) -> None:
        self._pending_cr = False

    def convert(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # It may be the first half of a CRLF split across chunks.
            chunk = chunk[:-1]
            self._pending_cr = True
        return normalise(chunk)

    def flush(self) -> bytes:
        if self._pending_cr:
            self._pending_cr = False
            return b"\n"
        return b""


def wire_size(chunks: Iterable[bytes]) -> int:
    """Octets of the message as transmitted: CRLF line ends, final CRLF added
    if missing, before dot-stuffing (RFC 1939 §11)."""
    ends = _LineEnds()
    size = 0
    lines = 0
    last = b""
    for chunk in chunks:
        data = ends.convert(chunk)
        if data:
            size += len(data)
            lines += data.count(b"\n")
            last = data[-1:]
    tail = ends.flush()
    if tail:
        size += 1
        lines += 1
        last = tail
    if size and last != b"\n":
        size += 1
        lines += 1
    return size + lines


@dataclass(slots=True)
class _TopState:
    """Line budget for TOP (RFC 1939 §7): all header lines, the blank line, then
    ``body_lines`` lines of the body."""

    body_lines: int
    in_headers: bool = True
    done: bool = False


# Past this many lines starting with a dot in one chunk, one replace() is
# cheaper than cutting around each of them.
_FEW_DOTS: Final = 32


def _stuff(data: bytes) -> bytes:
    """Double the dot that starts a line after a CRLF in ``data``.

    Most chunks have no such line, and CPython's reverse search for the
    three-byte ``\r\n.`` is about 2.7 times as fast as the forward search
    that ``replace`` does (4.7 against 1.75 GB/s): search backwards, and cut
    around the few lines found.
    """
    end = data.rfind(b"\r\n.")
    if end < 0:
        return data
    cuts: list[int] = []
    while end >= 0:
        if len(cuts) == _FEW_DOTS:
            return data.replace(b"\r\n.", b"\r\n..")
        cuts.append(end + 2)  # just before the dot
        # Occurrences cannot overlap: the previous one ends before this one.
        end = data.rfind(b"\r\n.", 0, end)
    parts = []
    start = 0
    for cut in reversed(cuts):
        parts.append(data[start:cut])
        start = cut
    parts.append(data[start:])
    return b".".join(parts)


class DotStuffer:
    """Turns a stored message, chunk by chunk, into the body of a POP3
    multi-line response: CRLF line ends, dot-stuffed, terminated by ``.CRLF``.

    With ``top_lines`` set, only the headers, the blank line and that many body
    lines are emitted (TOP); ``done`` then tells the caller it may stop
    reading.
    """

    __slots__ = ("_ends", "_line_start", "_top")

    def __init__(self, top_lines: int | None = None) -> None:
        self._ends = _LineEnds()
        self._line_start = True
        self._top = _TopState(top_lines) if top_lines is not None else None

    @property
    def done(self) -> bool:
        return self._top is not None and self._top.done

    def encode(self, chunk: bytes) -> bytes:
        data = self._ends.convert(chunk)
        return self._encode_lf(data)

    def finish(self) -> bytes:
        out = self._encode_lf(self._ends.flush())
        if not self._line_start:
            out += CRLF
        return out + b".\r\n"

    def _encode_lf(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._top is not None:
            data = self._cut_for_top(data)
            if not data:
                return b""
        stuffed = _stuff(data.replace(b"\n", CRLF))
        if self._line_start and stuffed[:1] == b".":
            stuffed = b"." + stuffed
        self._line_start = stuffed[-1:] == b"\n"
        return stuffed

    def _cut_for_top(self, data: bytes) -> bytes:
        top = self._top
        assert top is not None
        if top.done:
            return b""
        start = 0
        if top.in_headers:
            # The header ends at the first empty line: "\n\n" inside the data,
            # or a "\n" at the very start of a line.
            if self._line_start and data[:1] == b"\n":
                end = 0
            else:
                end = data.find(b"\n\n")
                if end < 0:
                    return data
                end += 1
            top.in_headers = False
            start = end + 1  # keep the blank line itself
        pos = start
        while top.body_lines > 0:
            nl = data.find(b"\n", pos)
            if nl < 0:
                return data  # the current line is incomplete; keep reading
            pos = nl + 1
            top.body_lines -= 1
        top.done = True
        return data[:pos]


class DataReader:
    """The message text of an SMTP/LMTP ``DATA`` command, chunk by chunk
    (RFC 5321 §4.1.1.4, §4.5.2).

    ``feed(chunk)`` returns ``(body, done)``: the message octets found in the
    chunk, dot-stuffing undone and line ends left as received, and whether
    the terminating line (a lone ``.``) has been seen.  The line end before
    the terminating dot belongs to the message (RFC 5321 §4.1.1.4).  Once
    ``done``, ``remainder`` holds what followed the terminator: pipelined
    commands, to go back to the command line reader.

    Lines start after every LF, so ``CRLF.CRLF``, ``LF.LF`` and mixes of the
    two end the message; a bare CR never ends a line (no ``CR.CR``).  There
    is no bound on line length: the caller bounds the message size.  At most
    two octets (``.`` or ``.CR`` at a line start, undecided until the next
    chunk) are held back between calls.  The scan looks only for ``LF.``, so
    lines that do not start with a dot cost no Python-level work.
    """

    __slots__ = ("_done", "_line_start", "_pending", "_remainder")

    def __init__(self) -> None:
        self._done = False
        self._line_start = True  # DATA text starts on a fresh line
        self._pending = b""
        self._remainder = b""

    @property
    def done(self) -> bool:
        return self._done

    @property
    def remainder(self) -> bytes:
        """The octets after the terminating line (empty until ``done``)."""
        return self._remainder

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        if self._done:
            raise ValueError("the DATA text has already ended")
        data = self._pending + chunk if self._pending else chunk
        self._pending = b""
        size = len(data)
        out: list[bytes] = []
        pos = 0  # first octet not yet emitted
        # ``line`` is the offset of a line start to examine, or -1: search.
        line = 0 if self._line_start else -1
        while True:
            if line < 0:
                found = data.find(b"\n.", pos)
                if found < 0:
                    if pos < size:
                        out.append(data[pos:])
                        self._line_start = data[-1:] == b"\n"
                    break
                line = found + 1
            if line == size:  # only for an empty chunk at a line start
                break
            if data[line] != 0x2E:  # "."
                line = -1
                continue
            after = data[line + 1 : line + 3]
            if after[:1] == b"\n" or after == b"\r\n":
                out.append(data[pos:line])
                self._remainder = data[line + 1 + (1 if after[:1] == b"\n" else 2) :]
                self._done = True
                break
            if after in (b"", b"\r"):
                # ".", ".CR" at the end: the next chunk decides.
                out.append(data[pos:line])
                self._pending = data[line:]
                self._line_start = True
                break
            # A stuffed dot: drop it, keep the rest of the line.
            out.append(data[pos:line])
            pos = line + 1
            line = -1
        return b"".join(out), self._done
