"""The tricky message set for client interop tests, how to deliver it over
LMTP with ``smtplib.LMTP``, and how to compare what a client stored with
what was delivered.

What a message looks like once delivered
----------------------------------------
``deliver_over_lmtp`` hands each message to ``smtplib.LMTP`` as bytes.
smtplib dot-stuffs it and, unless it already ends in CRLF, appends CRLF
before the terminating ``.`` (``smtplib.SMTP.data``).  RFC 5321 §4.1.1.4
makes that line end part of the message, so the server stores the message
*plus* that CRLF: a message without a final newline gains one, and a bare-LF
message ending in LF gains an empty CRLF line.  mailslot's LMTP listener
then prepends ``Return-Path: <sender>`` and ``Delivered-To: <recipient>``,
each ending like the message's first line (LF or CRLF).  ``delivered()``
is exactly that text; the interop tests compare clients against it, and
``test_client_matrix.py::test_smtplib_lmtp_delivery_stores_exact`` checks it
against the files in the maildrop.

Comparing
---------
The POP3 wire always uses CRLF and clients store LF or CRLF, so both sides
go through ``normalise`` (every CRLF, then every lone CR, becomes LF) before
a byte-for-byte comparison.  Each message carries a unique
``X-Mailslot-Test: <name>`` header so stored files can be matched to
messages whatever order or file names the client used.
"""

from __future__ import annotations

import base64
import functools
import random
import re
import smtplib
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

SENDER = "sender@example.net"
TAG = b"X-Mailslot-Test: "
_TAG_LINE = re.compile(rb"^X-Mailslot-Test: (\S+)$", re.MULTILINE)

ATTACHMENT_SIZE = 10 * 1024 * 1024
LONG_LINE = 100_000


@dataclass(frozen=True)
class Message:
    name: str
    data: bytes  # as handed to smtplib.LMTP

    @property
    def big(self) -> bool:
        return len(self.data) > 1_000_000


def _headers(name: str, subject: str, eol: bytes = b"\r\n", extra: bytes = b"") -> bytes:
    lines = [
        b"From: Alice Example <alice@example.org>",
        b"To: carol@localhost",
        b"Subject: " + subject.encode(),
        b"Date: Sat, 28 Nov 2026 10:15:02 +0000",
        b"Message-ID: <" + name.encode() + b"@mailslot.test>",
        TAG + name.encode(),
    ]
    return eol.join(lines) + eol + extra


@functools.cache
def attachment_message() -> bytes:
    """multipart/mixed with a 10 MiB binary attachment, base64 in 76-column
    lines (RFC 2045), deterministic."""
    payload = random.Random(1939).randbytes(ATTACHMENT_SIZE)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    boundary = b"=_mailslot_boundary_42"
    return (
        _headers("attachment", "10 MiB attachment")
        + b"MIME-Version: 1.0\r\n"
        + b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'
        + b"\r\n"
        + b"This is a multi-part message in MIME format.\r\n"
        + b"--" + boundary + b"\r\n"
        + b"Content-Type: text/plain; charset=us-ascii\r\n"
        + b"\r\n"
        + b"See the attachment.\r\n"
        + b"--" + boundary + b"\r\n"
        + b"Content-Type: application/octet-stream\r\n"
        + b"Content-Transfer-Encoding: base64\r\n"
        + b'Content-Disposition: attachment; filename="random.bin"\r\n'
        + b"\r\n"
        + encoded
        + b"--" + boundary + b"--\r\n"
    )  # fmt: skip


@functools.cache
def tricky_messages() -> tuple[Message, ...]:
    """One message per awkward case, in delivery order."""
    utf8_body = textwrap.dedent(
        """\
        Grüße aus Köln — ½ € 🙂
        Привет, мир. 日本語のテキスト。
        From the start of a line (mbox would quote this).
        >From already quoted.
        """
    ).encode()
    return (
        Message(
            "crlf",
            _headers("crlf", "a normal CRLF message") + b"\r\nHello Carol,\r\n\r\nregards.\r\n",
        ),
        Message(
            "leading-dots",
            _headers("leading-dots", "lines starting with dots")
            + b"\r\n.leading dot\r\n..two dots\r\n...three\r\n. space after dot\r\n"
            + b".\tdot tab\r\nend\r\n",
        ),
        Message(
            "lone-dot",
            _headers("lone-dot", "a line that is only a dot")
            + b"\r\nbefore\r\n.\r\nafter\r\n.\r\n..\r\nlast\r\n",
        ),
        Message(
            "bare-lf",
            _headers("bare-lf", "bare LF line ends", eol=b"\n")
            + b"\nline one\n.dot line\n.\n\nline after an empty one\n",
        ),
        Message(
            "utf8",
            _headers(
                "utf8",
                "8-bit UTF-8 body",
                extra=b"MIME-Version: 1.0\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n",
            )
            + b"\r\n"
            + utf8_body.replace(b"\n", b"\r\n"),
        ),
        Message("attachment", attachment_message()),
        Message(
            "long-line",
            _headers("long-line", "one 100 KB line")
            + b"\r\n"
            + bytes(ord("a") + i % 26 for i in range(LONG_LINE))
            + b"\r\nshort line after it\r\n",
        ),
        Message(
            "no-final-newline",
            _headers("no-final-newline", "no trailing newline") + b"\r\nlast line, no newline",
        ),
        Message("empty-body", _headers("empty-body", "headers, blank line, no body") + b"\r\n"),
        Message("headers-only", _headers("headers-only", "headers only, no blank line")),
    )


def smtplib_payload(data: bytes) -> bytes:
    """The message text the server receives from ``smtplib.SMTP.data(data)``
    (un-stuffed): smtplib appends CRLF unless the text already ends in CRLF."""
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def delivered(message: Message, recipient: str, sender: str = SENDER) -> bytes:
    """What mailslot's LMTP listener stores for ``message`` (see module doc)."""
    first = message.data.find(b"\n")
    eol = b"\n" if first >= 0 and message.data[first - 1 : first] != b"\r" else b"\r\n"
    return (
        b"Return-Path: <" + sender.encode() + b">" + eol
        + b"Delivered-To: " + recipient.encode() + eol
        + smtplib_payload(message.data)
    )  # fmt: skip


def on_the_wire(data: bytes) -> bytes:
    """A stored message as POP3 sends it (before dot-stuffing): CRLF line
    ends, and a final CRLF."""
    wire = normalise(data).replace(b"\n", b"\r\n")
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def deliver_over_lmtp(
    address: tuple[str, int],
    recipient: str,
    messages: Iterable[Message] | None = None,
    sender: str = SENDER,
) -> dict[str, bytes]:
    """Deliver each message in its own transaction on one LMTP connection;
    returns name -> ``delivered()`` text."""
    expected: dict[str, bytes] = {}
    host, port = address
    with smtplib.LMTP(host, port, timeout=120) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        for message in tricky_messages() if messages is None else messages:
            code, reply = lmtp.mail(sender)
            assert code == 250, reply
            code, reply = lmtp.rcpt(recipient)
            assert code == 250, reply
            code, reply = lmtp.data(message.data)
            assert code == 250, (message.name, code, reply)
            expected[message.name] = delivered(message, recipient, sender)
    return expected


def normalise(data: bytes) -> bytes:
    """CRLF and lone CR become LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def name_of(data: bytes) -> str:
    """The ``X-Mailslot-Test`` name in a stored message's header."""
    head = normalise(data).split(b"\n\n", 1)[0]
    match = _TAG_LINE.search(head)
    if match is None:
        raise AssertionError(f"no X-Mailslot-Test header in {data[:300]!r}")
    return match.group(1).decode()


def drop_header_lines(data: bytes, names: Iterable[str]) -> bytes:
    """``data`` (normalised) without the header fields called ``names``
    (with their continuation lines).  Only the header block is touched."""
    lowered = tuple(n.lower().encode() + b":" for n in names)
    text = normalise(data)
    head, sep, body = text.partition(b"\n\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):  # a continuation line
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(lowered)
        if not dropping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def first_difference(got: bytes, want: bytes) -> str:
    """A short description of where two (large) byte strings differ."""
    if got == want:
        return "identical"
    limit = min(len(got), len(want))
    index = next((i for i in range(limit) if got[i] != want[i]), limit)
    start = max(0, index - 60)
    return (
        f"lengths got={len(got)} want={len(want)}, first difference at octet {index}: "
        f"got {got[start : index + 60]!r} want {want[start : index + 60]!r}"
    )


def compare(
    stored: Iterable[bytes],
    expected: Mapping[str, bytes],
    *,
    client_headers: Iterable[str] = (),
    quirks: Mapping[str, Callable[[bytes], bytes]] | None = None,
) -> list[str]:
    """Problems found comparing the messages a client stored with
    ``expected`` (name -> delivered text), after normalising line ends.

    ``client_headers`` names header fields the client adds (removed from
    what it stored; a field the message had too would go as well, so name
    only fields the delivered messages do not carry).  ``quirks`` maps a
    message name to a function that undoes a known, documented change the
    client makes to that message (applied to the stored octets first).
    An empty list means every message arrived exactly once, unchanged."""
    client_headers = tuple(client_headers)
    quirks = quirks or {}
    problems: list[str] = []
    seen: dict[str, int] = {}
    for data in stored:
        name = name_of(data)
        seen[name] = seen.get(name, 0) + 1
        if name not in expected:
            problems.append(f"{name}: not expected")
            continue
        if name in quirks:
            data = quirks[name](data)
        got = drop_header_lines(data, client_headers) if client_headers else normalise(data)
        want = normalise(expected[name])
        if got != want:
            problems.append(f"{name}: {first_difference(got, want)}")
    for name in expected:
        if name not in seen:
            problems.append(f"{name}: missing")
        elif seen[name] > 1:
            problems.append(f"{name}: stored {seen[name]} times")
    return problems
