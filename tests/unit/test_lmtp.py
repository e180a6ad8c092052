"""The sans-I/O LMTP session (RFC 2033) and wire.DataReader, byte for byte."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot.delivery import lmtp
from mailslot.delivery.lmtp import (
    COMMANDS_BY_STATE,
    MAX_COMMAND_LINE,
    CloseRequested,
    DeliveryResults,
    LmtpSession,
    LmtpSessionOptions,
    LocalProtocolError,
    MessageComplete,
    MessageData,
    NeedData,
    RecipientAccepted,
    RecipientRejected,
    RecipientRequested,
    Reply,
    ReplyCode,
    State,
    Verb,
)
from mailslot.store.maildir import MaildirStore
from mailslot.wire import DataReader, DotStuffer, normalise
from tests.helpers.lmtp import HOSTNAME, LHLO_REPLY, LmtpHarness

SIZE = lmtp.DEFAULT_MAX_MESSAGE_SIZE
GREETING = b"220 mx.test LMTP mailslot ready\r\n"
OK = b"250 2.0.0 OK\r\n"
SENDER_OK = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
UNKNOWN = b"550 5.1.1 User unknown\r\n"
START = b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
DELIVERED = b"250 2.0.0 Delivered\r\n"
BYE = b"221 2.0.0 Bye\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"


def ready() -> LmtpHarness:
    """A harness after LHLO."""
    harness = LmtpHarness()
    assert harness.client_sends(b"LHLO client.test\r\n") == LHLO_REPLY % SIZE
    return harness


def in_transaction(*recipients: bytes) -> LmtpHarness:
    harness = ready()
    data = b"MAIL FROM:<sender@remote.test>\r\n" + b"".join(
        b"RCPT TO:<%s>\r\n" % r for r in recipients
    )
    harness.client_sends(data)
    return harness


def three_ways(make: Callable[[], LmtpHarness], data: bytes) -> list[bytes]:
    """Feed ``data`` whole, a byte at a time and with trailing data (h11's
    habit) to fresh harnesses made by ``make()``; return the three outputs."""
    outputs = []
    harness = make()
    outputs.append(harness.client_sends(data))
    harness = make()
    outputs.append(harness.client_sends(data, byte_at_a_time=True))
    harness = make()
    outputs.append(harness.client_sends(data + b"NOO"))  # an incomplete next command
    return outputs


# ---------------------------------------------------------------- greeting, LHLO


def test_greeting() -> None:
    assert LmtpHarness().greeting == GREETING


def test_lhlo_reply_byte_for_byte() -> None:
    expected = (
        b"250-mx.test\r\n"
        b"250-PIPELINING\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-8BITMIME\r\n"
        b"250 SIZE 52428800\r\n"
    )
    for out in three_ways(LmtpHarness, b"LHLO client.example\r\n"):
        assert out == expected


def test_lhlo_advertises_the_configured_size() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_message_size=1000))
    assert harness.client_sends(b"lhlo x\r\n").endswith(b"250 SIZE 1000\r\n")


def test_lhlo_needs_one_hostname() -> None:
    harness = LmtpHarness()
    assert harness.client_sends(b"LHLO\r\n") == b"501 5.5.4 Syntax: LHLO hostname\r\n"
    assert harness.client_sends(b"LHLO a b\r\n") == b"501 5.5.4 Syntax: LHLO hostname\r\n"


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO", b"helo", b"ehlo"])
def test_helo_and_ehlo_are_rejected(verb: bytes) -> None:
    for out in three_ways(LmtpHarness, verb + b" client.example\r\n"):
        assert out == b"500 5.5.1 This is LMTP: use LHLO\r\n"


def test_mail_before_lhlo_is_a_bad_sequence() -> None:
    harness = LmtpHarness()
    assert harness.client_sends(b"MAIL FROM:<a@b.test>\r\n") == b"503 5.5.1 Send LHLO first\r\n"
    assert harness.client_sends(b"RCPT TO:<a@b.test>\r\n") == b"503 5.5.1 Send LHLO first\r\n"
    assert harness.client_sends(b"DATA\r\n") == b"503 5.5.1 Send LHLO first\r\n"


# ---------------------------------------------------------------- the transaction


def test_full_transaction_three_recipients_one_unknown() -> None:
    harness = ready()
    out = harness.client_sends(b"MAIL FROM:<sender@remote.test>\r\n")
    assert out == SENDER_OK
    assert harness.client_sends(b"RCPT TO:<alice@example.org>\r\n") == RCPT_OK
    assert harness.client_sends(b"RCPT TO:<nobody@example.org>\r\n") == UNKNOWN
    assert harness.client_sends(b"RCPT TO:<Bob@Example.org>\r\n") == RCPT_OK
    assert harness.client_sends(b"DATA\r\n") == START
    out = harness.client_sends(b"Subject: hi\r\n\r\nHello.\r\n.\r\n")
    # RFC 2033 §4.2: one reply per *accepted* recipient, in RCPT order.
    assert out == DELIVERED * 2
    [message] = harness.delivered
    assert message.sender == "sender@remote.test"
    assert message.recipients == ("alice@example.org", "bob@example.org")
    assert message.body == b"Subject: hi\r\n\r\nHello.\r\n"
    assert harness.client_sends(b"QUIT\r\n") == BYE
    assert harness.closed == "quit"


def test_per_recipient_results_in_order() -> None:
    harness = ready()
    harness.failing = frozenset({"bob@example.org"})
    out = harness.client_sends(
        b"MAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
        b"RCPT TO:<carol@example.org>\r\nDATA\r\n"
    )
    assert out == SENDER_OK + RCPT_OK * 3 + START
    out = harness.client_sends(b"x\r\n.\r\n")
    assert out == DELIVERED + b"451 4.3.0 Temporary failure, try again later\r\n" + DELIVERED
    assert harness.delivered[0].sender == ""


def test_whole_transaction_pipelined_in_one_feed() -> None:
    data = (
        b"LHLO client.test\r\n"
        b"MAIL FROM:<sender@remote.test> BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<nobody@example.org>\r\n"
        b"RCPT TO:<carol@example.org>\r\n"
        b"DATA\r\n"
        b"line one\r\n..dotted\r\n.\r\n"
        b"NOOP\r\n"
        b"QUIT\r\n"
    )
    expected = LHLO_REPLY % SIZE + SENDER_OK + RCPT_OK + UNKNOWN + RCPT_OK + START
    expected += DELIVERED * 2 + OK + BYE
    harnesses = []
    for byte_at_a_time in (False, True):
        harness = LmtpHarness()
        assert harness.client_sends(data, byte_at_a_time=byte_at_a_time) == expected
        harnesses.append(harness)
    for harness in harnesses:
        assert harness.delivered[0].body == b"line one\r\n.dotted\r\n"
        assert harness.closed == "quit"


def test_commands_after_the_final_dot_wait_for_the_delivery_results() -> None:
    harness = in_transaction(b"alice@example.org")
    harness.client_sends(b"DATA\r\n")
    session = harness.session
    session.receive_data(b"body\r\n.\r\nNOOP\r\n")
    assert session.next_event() == MessageData(b"body\r\n")
    event = session.next_event()
    assert isinstance(event, MessageComplete)
    assert session.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        session.next_event()  # still waiting for the results
    session.send(DeliveryResults([(True, 250, "2.0.0", "Delivered")]))
    assert session.next_event() == NeedData()
    assert session.data_to_send() == DELIVERED + OK


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"NOOP\r\n", OK),
        (b"NOOP anything at all\r\n", OK),
        (b"RSET\r\n", OK),
        (
            b"VRFY alice\r\n",
            b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
        ),
        (b"VRFY\r\n", b"501 5.5.4 Syntax: VRFY address\r\n"),
        (b"RSET now\r\n", b"501 5.5.4 No arguments allowed\r\n"),
        (b"QUIT\r\n", BYE),
        (b"EXPN staff\r\n", b"500 5.5.1 Command unrecognized\r\n"),
        (b"MAIL FROM:<a@b.test>\r\n", SENDER_OK),
        (b"MAIL FROM: <a@b.test>\r\n", SENDER_OK),
        (b"mail from:<a@b.test> size=100 body=7bit\r\n", SENDER_OK),
        (b"MAIL FROM:<>\r\n", SENDER_OK),
        (b"MAIL FROM:<@relay.test,@other.test:a@b.test>\r\n", SENDER_OK),
        (b'MAIL FROM:<"john doe"@b.test>\r\n', SENDER_OK),
        (b"MAIL FROM:a@b.test\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b.test\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b.test>x\r\n", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL TO:<a@b.test>\r\n", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        (b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n", b"501 5.5.4 Bad MAIL parameter\r\n"),
        (b"MAIL FROM:<a@b.test> SIZE=ten\r\n", b"501 5.5.4 Bad MAIL parameter\r\n"),
        (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2\r\n", b"501 5.5.4 Bad MAIL parameter\r\n"),
        (b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", b"555 5.5.4 Unsupported parameter\r\n"),
        (b"MAIL FROM:<a@b.test> SIZE=52428801\r\n", TOO_BIG),
        (b"RCPT TO:<alice@example.org>\r\n", b"503 5.5.1 Send MAIL first\r\n"),
        (b"DATA\r\n", b"503 5.5.1 Send MAIL first\r\n"),
        (b"LHLO again.test\r\n", LHLO_REPLY % SIZE),
    ],
)
def test_each_command_whole_bytewise_and_with_trailing_data(command: bytes, reply: bytes) -> None:
    for out in three_ways(ready, command):
        assert out == reply


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RCPT TO:<carol@example.org>\r\n", RCPT_OK),
        (b"RCPT TO: <carol@example.org>\r\n", RCPT_OK),
        (b"RCPT TO:<nobody@example.org>\r\n", UNKNOWN),
        (b"RCPT TO:<>\r\n", b"501 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT TO:carol@example.org\r\n", b"501 5.1.3 Bad recipient address syntax\r\n"),
        (b"RCPT FROM:<carol@example.org>\r\n", b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        (b"RCPT TO:<carol@example.org> NOTIFY=NEVER\r\n", b"555 5.5.4 Unsupported parameter\r\n"),
        (b"MAIL FROM:<a@b.test>\r\n", b"503 5.5.1 Sender already specified\r\n"),
        (b"DATA\r\n", START),
        (b"DATA now\r\n", b"501 5.5.4 No arguments allowed\r\n"),
    ],
)
def test_transaction_commands_three_ways(command: bytes, reply: bytes) -> None:
    for out in three_ways(lambda: in_transaction(b"alice@example.org"), command):
        assert out == reply


def test_data_without_valid_recipient() -> None:
    harness = in_transaction(b"nobody@example.org")
    assert harness.client_sends(b"DATA\r\n") == b"503 5.5.1 No valid recipients\r\n"
    # The refused DATA's text is then read as commands, as in SMTP.
    assert harness.client_sends(b"RSET\r\n") == OK
    assert harness.session.state is State.READY


def test_rset_ends_the_transaction() -> None:
    harness = in_transaction(b"alice@example.org")
    assert harness.client_sends(b"RSET\r\nDATA\r\n") == OK + b"503 5.5.1 Send MAIL first\r\n"


def test_lhlo_resets_the_transaction() -> None:
    harness = in_transaction(b"alice@example.org")
    out = harness.client_sends(b"LHLO again.test\r\nRCPT TO:<bob@example.org>\r\n")
    assert out == LHLO_REPLY % SIZE + b"503 5.5.1 Send MAIL first\r\n"


def test_too_many_recipients() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_recipients=2))
    out = harness.client_sends(
        b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<nobody@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
        b"RCPT TO:<carol@example.org>\r\nDATA\r\nx\r\n.\r\n"
    )
    assert out.endswith(
        RCPT_OK + UNKNOWN + RCPT_OK + b"452 4.5.3 Too many recipients\r\n" + START + DELIVERED * 2
    )


def test_over_quota_recipient_is_a_temporary_rejection() -> None:
    harness = ready()
    harness.full = frozenset({"bob@example.org"})
    out = harness.client_sends(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\n")
    assert out == SENDER_OK + b"452 4.2.2 Mailbox full\r\n"


def test_rcpt_carries_the_declared_size() -> None:
    harness = ready()
    session = harness.session
    session.receive_data(b"MAIL FROM:<> SIZE=1234\r\nRCPT TO:<bob@example.org>\r\n")
    assert session.next_event() == RecipientRequested(address="bob@example.org", size=1234)


def test_empty_message() -> None:
    harness = in_transaction(b"alice@example.org")
    assert harness.client_sends(b"DATA\r\n.\r\n") == START + DELIVERED
    assert harness.delivered[0].body == b""


# ---------------------------------------------------------------- DATA text


def test_data_text_may_arrive_with_the_data_command() -> None:
    harness = in_transaction(b"alice@example.org")
    assert harness.client_sends(b"DATA\r\nhello\r\n.\r\n") == START + DELIVERED
    assert harness.delivered[0].body == b"hello\r\n"


@pytest.mark.parametrize(
    ("chunks", "body"),
    [
        ([b"a\r\n.", b"\r\n"], b"a\r\n"),
        ([b"a\r\n.\r", b"\n"], b"a\r\n"),
        ([b"a\r\n", b".", b"\r", b"\n"], b"a\r\n"),
        ([b"a\r\n.", b".b\r\n.\r\n"], b"a\r\n.b\r\n"),
        ([b"a\r\n.\r", b"x\r\n.\r\n"], b"a\r\n\rx\r\n"),
        ([b"a\r\n.", b"b\r\n.\r\n"], b"a\r\nb\r\n"),
        ([b"..\r\n.\r\n"], b".\r\n"),
        ([b"a\r\n..\r\n", b".\r\n"], b"a\r\n.\r\n"),
        ([b"a\r\n..", b"\r\n.\r\n"], b"a\r\n.\r\n"),
        ([b"a\n.\n"], b"a\n"),
        ([b"a\r\n.\n"], b"a\r\n"),
        ([b"a\r.\r\n.\r\n"], b"a\r.\r\n"),  # a bare CR does not start a line
        ([b"", b"a", b"", b"\r\n.\r\n"], b"a\r\n"),
    ],
)
def test_dot_unstuffing_across_chunk_boundaries(chunks: list[bytes], body: bytes) -> None:
    harness = in_transaction(b"alice@example.org")
    out = harness.client_sends(b"DATA\r\n")
    for chunk in chunks:
        out += harness.client_sends(chunk)
    assert out == START + DELIVERED
    assert harness.delivered[0].body == body


def test_a_line_that_is_only_two_dots_is_one_dot() -> None:
    harness = in_transaction(b"alice@example.org")
    harness.client_sends(b"DATA\r\nbefore\r\n..\r\nafter\r\n.\r\n")
    assert harness.delivered[0].body == b"before\r\n.\r\nafter\r\n"


def test_a_100_kb_line_passes() -> None:
    harness = in_transaction(b"alice@example.org")
    line = b"x" * 100_000 + b"\r\n"
    assert harness.client_sends(b"DATA\r\n" + line + b".\r\n") == START + DELIVERED
    assert harness.delivered[0].body == line


def test_message_over_the_size_limit_is_read_to_the_end_then_refused() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_message_size=100))
    out = harness.client_sends(
        b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.org>\r\nDATA\r\n"
    )
    assert out.endswith(START)
    out = b""
    for _ in range(10):
        out += harness.client_sends(b"y" * 48 + b"\r\n")
    assert out == b""
    assert harness.client_sends(b".\r\nNOOP\r\n") == TOO_BIG * 2 + OK
    assert harness.delivered == []
    assert harness.discarded == 1


def test_message_exactly_at_the_size_limit_passes() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_message_size=100))
    harness.client_sends(b"LHLO c\r\nMAIL FROM:<> SIZE=100\r\nRCPT TO:<alice@example.org>\r\n")
    out = harness.client_sends(b"DATA\r\n" + b"z" * 98 + b"\r\n.\r\n")
    assert out == START + DELIVERED


def test_eof_in_the_middle_of_data_delivers_nothing() -> None:
    harness = in_transaction(b"alice@example.org")
    harness.client_sends(b"DATA\r\nSubject: half\r\n\r\nhalf a mess")
    assert harness.client_closes() == b""
    assert harness.closed == "eof-in-data"
    assert harness.delivered == []
    assert isinstance(harness.events[-1], CloseRequested)


# ---------------------------------------------------------------- bad input


def test_overlong_command_line_then_resync_without_running_the_tail() -> None:
    line = b"NOOP " + b"x" * (MAX_COMMAND_LINE + 10) + b" QUIT\r\n"
    for out in three_ways(ready, line + b"RSET\r\n"):
        assert out == b"500 5.5.2 Line too long\r\n" + OK


def test_command_line_limit_includes_crlf() -> None:
    fits = b"NOOP " + b"x" * (MAX_COMMAND_LINE - 7) + b"\r\n"
    assert len(fits) == MAX_COMMAND_LINE
    assert ready().client_sends(fits) == OK
    assert ready().client_sends(b"NOOP " + fits) == b"500 5.5.2 Line too long\r\n"


def test_nul_in_command() -> None:
    for out in three_ways(ready, b"NOOP\x00\r\n"):
        assert out == b"500 5.5.2 NUL character in command\r\n"


def test_invalid_utf8_in_command() -> None:
    assert ready().client_sends(b"MAIL FROM:<\xff@x>\r\n") == (
        b"500 5.5.2 Command is not valid UTF-8\r\n"
    )


def test_too_many_bad_commands_close_the_session() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_bad_commands=3))
    out = harness.client_sends(b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert out == b"500 5.5.1 Command unrecognized\r\n" * 2 + (
        b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert harness.closed == "bad-commands"


def test_good_command_resets_the_bad_command_count() -> None:
    harness = LmtpHarness(options=LmtpSessionOptions(hostname=HOSTNAME, max_bad_commands=2))
    out = harness.client_sends(b"BAD\r\nNOOP\r\nBAD\r\nNOOP\r\n")
    assert out == (b"500 5.5.1 Command unrecognized\r\n" + OK) * 2
    assert harness.closed is None


def test_timeout() -> None:
    harness = ready()
    harness.session.timed_out()
    assert harness.run() == b"421 4.4.2 Idle timeout, closing connection\r\n"
    assert harness.closed == "timeout"


def test_eof_between_commands() -> None:
    harness = ready()
    assert harness.client_closes() == b""
    assert harness.closed == "eof"


# ---------------------------------------------------------------- driver misuse


def test_driver_misuse_raises_local_protocol_error() -> None:
    session = LmtpSession(options=LmtpSessionOptions())
    with pytest.raises(LocalProtocolError):
        session.send(RecipientAccepted(account_key="x"))
    session.receive_data(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\n")
    assert isinstance(session.next_event(), RecipientRequested)
    with pytest.raises(LocalProtocolError):
        session.next_event()
    with pytest.raises(LocalProtocolError):
        session.send(DeliveryResults([]))
    session.send(RecipientAccepted(account_key="a@b.test"))
    session.receive_data(b"DATA\r\n.\r\n")
    assert isinstance(session.next_event(), MessageComplete)
    with pytest.raises(LocalProtocolError, match="2 delivery results for 1"):
        session.send(DeliveryResults([(True, 250, "2.0.0", "a"), (True, 250, "2.0.0", "b")]))
    with pytest.raises(LocalProtocolError, match="ok=False"):
        session.send(DeliveryResults([(False, 250, "2.0.0", "a")]))
    with pytest.raises(LocalProtocolError, match="enhanced"):
        session.send(DeliveryResults([(False, 451, "5.3.0", "a")]))
    with pytest.raises(LocalProtocolError, match="printable"):
        session.send(DeliveryResults([(True, 250, "2.0.0", "a\r\n250 forged")]))
    session.send(DeliveryResults([(True, 250, "2.0.0", "Saved")]))
    session.receive_eof()
    with pytest.raises(LocalProtocolError):
        session.receive_data(b"NOOP\r\n")


def test_rejections_need_an_error_code() -> None:
    with pytest.raises(LocalProtocolError):
        RecipientRejected(code=250, enhanced="2.1.5", text="fine")
    with pytest.raises(LocalProtocolError):
        RecipientRejected(code=550, enhanced="4.1.1", text="class mismatch")


def test_options_validate_themselves() -> None:
    for bad in (
        {"hostname": "two words"},
        {"hostname": ""},
        {"max_message_size": 0},
        {"max_recipients": 0},
        {"max_bad_commands": 0},
    ):
        with pytest.raises(ValueError):
            LmtpSessionOptions(**bad)


# ---------------------------------------------------------------- the tables


def test_reply_constants_have_matching_enhanced_codes() -> None:
    replies = [v for v in vars(lmtp).values() if isinstance(v, Reply)]
    assert len(replies) > 20
    for reply in replies:
        assert reply.code in set(ReplyCode), reply
        if reply.code // 100 == 3:
            assert reply.enhanced == ""
        else:
            assert reply.enhanced[0] == str(reply.code)[0], reply
        assert len(reply.encode()) <= lmtp.MAX_REPLY_LINE


def test_reply_codes_are_rfc_5321_values() -> None:
    rfc_5321 = {
        "SERVICE_READY": 220,
        "CLOSING": 221,
        "OK": 250,
        "CANNOT_VRFY": 252,
        "START_MAIL_INPUT": 354,
        "SERVICE_NOT_AVAILABLE": 421,
        "LOCAL_ERROR": 451,
        "INSUFFICIENT_STORAGE": 452,
        "SYNTAX_ERROR": 500,
        "PARAMETER_SYNTAX_ERROR": 501,
        "BAD_SEQUENCE": 503,
        "MAILBOX_UNAVAILABLE": 550,
        "EXCEEDED_STORAGE": 552,
        "PARAMETER_NOT_IMPLEMENTED": 555,
    }
    assert {code.name: int(code) for code in ReplyCode} == rfc_5321


def test_every_verb_is_valid_somewhere_and_quit_everywhere() -> None:
    valid = set().union(*COMMANDS_BY_STATE.values())
    assert valid == set(Verb)
    for state in (State.GREETED, State.READY, State.MAIL, State.RCPT):
        assert Verb.QUIT in COMMANDS_BY_STATE[state]


_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][\x20-\x7e]*")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_garbage_in_gives_well_formed_replies_only(lines: list[bytes]) -> None:
    """Fuzz invariant: any input is answered with well-formed reply lines,
    never an exception."""
    harness = ready()
    data = b"MAIL FROM:<>\r\n" + b"\r\n".join(lines) + b"\r\n"
    out = harness.client_sends(data) + harness.client_closes()
    for line in out.split(b"\r\n")[:-1]:
        assert _REPLY_LINE.fullmatch(line), line


# ---------------------------------------------------------------- wire.DataReader


def read_data(chunks: list[bytes]) -> tuple[bytes, bool, bytes]:
    """Feed chunks until the end; the remainder includes unfed chunks."""
    reader = DataReader()
    body = b""
    for n, chunk in enumerate(chunks):
        piece, done = reader.feed(chunk)
        body += piece
        if done:
            return body, True, reader.remainder + b"".join(chunks[n + 1 :])
    return body, False, b""


def test_data_reader_keeps_the_remainder() -> None:
    assert read_data([b"a\r\n.\r\nNOOP\r\nQUIT\r\n"]) == (b"a\r\n", True, b"NOOP\r\nQUIT\r\n")


def test_data_reader_refuses_data_after_the_end() -> None:
    reader = DataReader()
    assert reader.feed(b".\r\n") == (b"", True)
    with pytest.raises(ValueError):
        reader.feed(b"more")


def test_data_reader_every_split_point() -> None:
    wire = b"..a\r\nb\r\n..\r\n.\r\n...c\n.x\r\n.\r\nTAIL"
    # The lone "." after "..\r\n" ends the text: the rest is remainder.
    expected = (b".a\r\nb\r\n.\r\n", True, b"...c\n.x\r\n.\r\nTAIL")
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            assert read_data([wire[:i], wire[i:j], wire[j:]]) == expected, (i, j)


def _expected_body(body: bytes) -> bytes:
    text = normalise(body)
    if text and not text.endswith(b"\n"):
        text += b"\n"
    return text


@settings(max_examples=500, deadline=None)
@given(
    body=st.binary(max_size=300)
    | st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"x.y"])).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_dot_stuffed_bodies_survive_the_round_trip(body: bytes, cuts: list[int]) -> None:
    """Any body stuffed by the POP3 side's DotStuffer comes back out of the
    DataReader identical, after CRLF normalisation, in any chunking."""
    stuffer = DotStuffer()
    wire = stuffer.encode(body) + stuffer.finish() + b"QUIT\r\n"
    points = sorted({min(c, len(wire)) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    got, done, remainder = read_data(chunks)
    assert done
    assert normalise(got) == _expected_body(body)
    assert got == _expected_body(body).replace(b"\n", b"\r\n")
    assert remainder == b"QUIT\r\n"


# ---------------------------------------------------------------- Maildir usage


def test_maildir_usage_counts_cur_and_new(tmp_path: Path) -> None:
    store = MaildirStore(str(tmp_path / "{domain}" / "{user}"), hostname="test")
    assert store.usage("u", "example.org") == (0, 0)
    store.deliver("u", "example.org", io.BytesIO(b"12345"))
    store.deliver("u", "example.org", io.BytesIO(b"1234567890"))
    maildir = tmp_path / "example.org" / "u"
    # A file without ",S=" is measured with stat.
    (maildir / "cur" / "1.external:2,S").write_bytes(b"abc")
    (maildir / "cur" / ".hidden").write_bytes(b"ignored")
    os.mkdir(maildir / "cur" / "subdir")
    assert store.usage("u", "example.org") == (3, 18)
