"""The sans-I/O POP3 session, byte for byte."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot.pop3.events import CommitDone, MessageRequested
from mailslot.pop3.session import (
    MAX_COMMAND_LINE,
    MAX_RESPONSE_LINE,
    LocalProtocolError,
    Session,
    SessionOptions,
)
from mailslot.pop3.states import COMMANDS_BY_STATE, State, Verb
from mailslot.wire import normalise
from tests.helpers.harness import PASSWORD, USER, SessionHarness, unstuff_multiline

MSG1 = b"From: a@b\r\nSubject: one\r\n\r\nHello\r\n.dotted line\r\n"
MSG2 = b"From: c@d\nSubject: two\n\nbare LF body\n.\nlast line without newline"


def logged_in(messages: list[bytes] | None = None, **kwargs: object) -> SessionHarness:
    h = SessionHarness(messages=[MSG1, MSG2] if messages is None else messages, **kwargs)  # type: ignore[arg-type]
    out = h.login()
    assert out.splitlines()[-1].startswith(b"+OK Maildrop has"), out
    return h


# ---------------------------------------------------------------- greeting, state


def test_greeting_carries_apop_timestamp_only_with_apop() -> None:
    h = SessionHarness(options=SessionOptions(apop=True))
    assert h.greeting == b"+OK mailslot ready. <1896.697170952@dbc.mtview.ca.us>\r\n"
    assert h.session.state is State.AUTHORIZATION
    assert SessionHarness().greeting == b"+OK mailslot ready.\r\n"


def test_rfc1939_example_session() -> None:
    """RFC 1939 §10, with USER/PASS in place of APOP."""
    h = SessionHarness(messages=[b"a" * 118 + b"\r\n", b"b" * 198 + b"\r\n"])
    assert h.client_sends(f"USER {USER}\r\n".encode()) == b"+OK\r\n"
    assert h.client_sends(f"PASS {PASSWORD}\r\n".encode()) == (
        b"+OK Maildrop has 2 messages (320 octets)\r\n"
    )
    assert h.client_sends(b"STAT\r\n") == b"+OK 2 320\r\n"
    assert h.client_sends(b"LIST\r\n") == b"+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n"
    out = h.client_sends(b"RETR 1\r\n")
    assert out == b"+OK 120 octets\r\n" + b"a" * 118 + b"\r\n.\r\n"
    assert h.client_sends(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert h.client_sends(b"RETR 2\r\n").startswith(b"+OK 200 octets\r\n")
    assert h.client_sends(b"DELE 2\r\n") == b"+OK Message 2 deleted\r\n"
    assert h.client_sends(b"QUIT\r\n") == b"+OK mailslot signing off (maildrop empty)\r\n"
    assert h.committed == frozenset({0, 1})
    assert h.closed == "quit"


@pytest.mark.parametrize("verb", list(Verb))
@pytest.mark.parametrize("state", [State.AUTHORIZATION, State.TRANSACTION])
def test_every_command_in_every_state(verb: Verb, state: State) -> None:
    h = logged_in() if state is State.TRANSACTION else SessionHarness(messages=[MSG1])
    args = {
        "USER": " x",
        "PASS": " y",
        "APOP": " x " + "0" * 32,
        "RETR": " 1",
        "DELE": " 1",
        "TOP": " 1 0",
        "AUTH": "",
        "LANG": "",
    }.get(verb.value, "")
    out = h.client_sends(f"{verb.value}{args}\r\n".encode())
    first = out.split(b"\r\n", 1)[0]
    if verb is Verb.STLS:
        assert first.startswith(b"-ERR Unknown command")  # not offered without TLS
    elif verb not in COMMANDS_BY_STATE[state]:
        assert first.startswith(b"-ERR Command not valid in " + state.value.encode())
        assert b"Allowed:" in first
    elif verb is Verb.APOP:
        assert first == b"-ERR [AUTH] APOP is not available"
    elif verb is Verb.PASS:
        assert first == b"-ERR Send USER first"
    else:
        assert first.startswith(b"+OK"), (verb, first)


def test_commands_are_case_insensitive() -> None:
    h = logged_in()
    assert (
        h.client_sends(b"stat\r\n")
        == b"+OK 2 " + str(h.entries[0].size + h.entries[1].size).encode() + b"\r\n"
    )
    assert h.client_sends(b"NoOp\r\n") == b"+OK\r\n"


def test_unknown_and_removed_commands() -> None:
    h = logged_in()
    for line in (b"LAST\r\n", b"XYZZY\r\n", b"\r\n", b"\xff\xfe\r\n"):
        assert h.client_sends(line).startswith(b"-ERR Unknown command. Allowed in TRANSACTION")


# ---------------------------------------------------------------- authorization


def test_wrong_password_then_right_one() -> None:
    h = SessionHarness(messages=[MSG1])
    h.client_sends(f"USER {USER}\r\n".encode())
    assert h.client_sends(b"PASS nope\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert h.client_sends(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR Send USER first\r\n"
    assert h.login().endswith(
        b"+OK Maildrop has 1 messages (" + str(h.entries[0].size).encode() + b" octets)\r\n"
    )


def test_unknown_user_looks_like_wrong_password() -> None:
    h = SessionHarness()
    assert h.client_sends(b"USER nobody\r\n") == b"+OK\r\n"
    assert h.client_sends(b"PASS x\r\n") == b"-ERR [AUTH] Authentication failed\r\n"


def test_too_many_auth_failures_close() -> None:
    h = SessionHarness(options=SessionOptions(max_auth_failures=2))
    h.client_sends(b"USER a\r\nPASS b\r\n")
    out = h.client_sends(b"USER a\r\nPASS b\r\nNOOP\r\n")
    assert out == b"+OK\r\n-ERR [AUTH] Authentication failed; too many failures, closing\r\n"
    assert h.closed == "auth-failures"


def test_password_keeps_spaces_and_tabs() -> None:
    h = SessionHarness()
    h.client_sends(b"USER u\r\nPASS  two words\there \r\n")
    requests = [r for r in h.requests if type(r).__name__ == "AuthRequested"]
    assert requests[0].password == " two words\there "  # type: ignore[attr-defined]


def test_nul_in_password_is_rejected_not_truncated() -> None:
    h = SessionHarness()
    out = h.client_sends(f"USER {USER}\r\nPASS {PASSWORD}\x00junk\r\n".encode())
    assert out == b"+OK\r\n-ERR NUL byte in command\r\n"
    assert h.session.state is State.AUTHORIZATION


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        ("busy", b"-ERR [IN-USE] Maildrop is locked by another session\r\n"),
        ("delayed", b"-ERR [LOGIN-DELAY] Logged in too recently, try later\r\n"),
        ("failed", b"-ERR [SYS/TEMP] Maildrop unavailable\r\n"),
        ("perm", b"-ERR [SYS/PERM] Maildrop unavailable\r\n"),
    ],
)
def test_maildrop_refusals_after_good_credentials(answer: str, reply: bytes) -> None:
    h = SessionHarness(maildrop_answer=answer)
    assert h.login() == b"+OK\r\n" + reply
    assert h.session.state is State.AUTHORIZATION


def test_in_use_never_follows_bad_credentials() -> None:
    h = SessionHarness(maildrop_answer="busy")
    out = h.client_sends(b"USER mrose\r\nPASS wrong\r\n")
    assert b"IN-USE" not in out and b"[AUTH]" in out


def test_apop_parser_and_option() -> None:
    h = SessionHarness(options=SessionOptions(apop=True))
    assert h.client_sends(b"APOP mrose nothex\r\n") == b"-ERR Invalid APOP digest\r\n"
    out = h.client_sends(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert out == b"-ERR [AUTH] Authentication failed\r\n"
    request = h.requests[-2]
    assert request.timestamp == "<1896.697170952@dbc.mtview.ca.us>"  # type: ignore[attr-defined]


def test_plaintext_auth_disabled() -> None:
    h = SessionHarness(options=SessionOptions(plaintext_without_tls=False))
    out = h.client_sends(b"USER mrose\r\n")
    assert out.startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    assert b"\r\nUSER\r\n" not in h.client_sends(b"CAPA\r\n")


def test_utf8_and_lang() -> None:
    h = SessionHarness()
    assert h.client_sends(b"UTF8\r\n") == b"+OK UTF8 enabled\r\n"
    assert h.client_sends(b"LANG\r\n") == b"+OK Language listing follows\r\nen English\r\n.\r\n"
    assert h.client_sends(b"LANG en\r\n") == b"+OK en Language changed to English\r\n"
    assert h.client_sends(b"LANG *\r\n") == b"+OK en Language changed to English\r\n"
    assert h.client_sends(b"LANG xx\r\n") == b"-ERR Unsupported language\r\n"
    name = "пользователь"
    h.client_sends(f"USER {name}\r\nPASS пароль\r\n".encode())
    request = h.requests[-2]
    assert request.username == name and request.password == "пароль"  # type: ignore[attr-defined]


def test_bare_auth_lists_mechanisms() -> None:
    h = SessionHarness(options=SessionOptions(sasl_mechanisms=("PLAIN",)))
    assert h.client_sends(b"AUTH\r\n") == b"+OK Supported SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
    assert h.client_sends(b"AUTH \r\n").startswith(b"+OK")


# ---------------------------------------------------------------- CAPA


def test_capa_in_both_states() -> None:
    options = SessionOptions(expire="NEVER", login_delay=900)
    h = SessionHarness(messages=[MSG1], options=options)
    expected = (
        b"+OK Capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\nEXPIRE NEVER\r\nLOGIN-DELAY 900\r\nUTF8 USER\r\nLANG\r\n"
        b"IMPLEMENTATION mailslot\r\n.\r\n"
    )
    assert h.client_sends(b"CAPA\r\n") == expected
    h.login()
    assert h.client_sends(b"CAPA\r\n") == expected


# ---------------------------------------------------------------- transaction


def test_stat_list_uidl_exclude_deleted() -> None:
    h = logged_in()
    s1, s2 = h.entries[0].size, h.entries[1].size
    assert h.client_sends(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert h.client_sends(b"STAT\r\n") == f"+OK 1 {s2}\r\n".encode()
    assert (
        h.client_sends(b"LIST\r\n") == f"+OK 1 messages ({s2} octets)\r\n2 {s2}\r\n.\r\n".encode()
    )
    assert h.client_sends(b"UIDL\r\n") == b"+OK Unique-ID listing follows\r\n2 uid-2\r\n.\r\n"
    for command in (b"LIST 1", b"UIDL 1", b"RETR 1", b"TOP 1 0", b"DELE 1"):
        assert h.client_sends(command + b"\r\n") == b"-ERR Message 1 already deleted\r\n"
    assert h.client_sends(b"UIDL 2\r\n") == b"+OK 2 uid-2\r\n"
    assert (
        h.client_sends(b"RSET\r\n")
        == f"+OK Maildrop has 2 messages ({s1 + s2} octets)\r\n".encode()
    )
    assert h.client_sends(b"LIST 1\r\n") == f"+OK 1 {s1}\r\n".encode()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RETR", b"-ERR Missing argument"),
        (b"RETR x", b"-ERR Invalid message number"),
        (b"RETR -1", b"-ERR Invalid message number"),
        (b"RETR +1", b"-ERR Invalid message number"),
        (b"RETR 0", b"-ERR No such message"),
        (b"RETR 3", b"-ERR No such message"),
        (b"RETR 99999999999999999999999", b"-ERR No such message"),
        (b"RETR 1 2", b"-ERR Too many arguments"),
        (b"RETR \xd9\xa1", b"-ERR Invalid message number"),  # Arabic-Indic digit one
        (b"DELE", b"-ERR Missing argument"),
        (b"LIST 1 2", b"-ERR Too many arguments"),
        (b"LIST 0", b"-ERR No such message"),
        (b"TOP 1", b"-ERR Missing argument"),
        (b"TOP 1 x", b"-ERR Invalid line count"),
        (b"TOP 1 -1", b"-ERR Invalid line count"),
        (b"TOP 9 1", b"-ERR No such message"),
        (b"STAT 1", b"-ERR Too many arguments"),
        (b"NOOP x", b"-ERR Too many arguments"),
        (b"UIDL 5", b"-ERR No such message"),
    ],
)
def test_argument_validation(command: bytes, reply: bytes) -> None:
    h = logged_in()
    assert h.client_sends(command + b"\r\n") == reply + b"\r\n"
    assert h.client_sends(b"NOOP\r\n") == b"+OK\r\n"  # the session goes on


def test_retr_normalises_and_stuffs() -> None:
    h = logged_in()
    out = h.client_sends(b"RETR 2\r\n")
    assert out == (
        f"+OK {h.entries[1].size} octets\r\n".encode()
        + b"From: c@d\r\nSubject: two\r\n\r\nbare LF body\r\n..\r\nlast line without newline\r\n.\r\n"
    )
    body = unstuff_multiline(out)
    assert len(body) == h.entries[1].size


def test_top() -> None:
    h = logged_in()
    assert (
        h.client_sends(b"TOP 2 0\r\n")
        == b"+OK Top of message follows\r\nFrom: c@d\r\nSubject: two\r\n\r\n.\r\n"
    )
    assert h.client_sends(b"TOP 2 2\r\n") == (
        b"+OK Top of message follows\r\nFrom: c@d\r\nSubject: two\r\n\r\nbare LF body\r\n..\r\n.\r\n"
    )
    everything = h.client_sends(b"TOP 2 100\r\n")
    assert unstuff_multiline(everything) == unstuff_multiline(h.client_sends(b"RETR 2\r\n"))


def test_top_stops_reading_early() -> None:
    big = b"Subject: x\r\n\r\n" + b"line\r\n" * 100_000
    h = logged_in([big], chunk_size=1024)
    out = h.client_sends(b"TOP 1 1\r\n")
    assert out == b"+OK Top of message follows\r\nSubject: x\r\n\r\nline\r\n.\r\n"


def test_message_removed_by_another_tool() -> None:
    h = logged_in(gone={0})
    assert h.client_sends(b"RETR 1\r\n") == b"-ERR [SYS/PERM] Message no longer exists\r\n"
    assert h.client_sends(b"RETR 2\r\n").startswith(b"+OK")


def test_quit_without_dele_commits_nothing() -> None:
    h = logged_in()
    assert h.client_sends(b"QUIT\r\n") == b"+OK mailslot signing off (2 messages left)\r\n"
    assert h.committed is None
    assert h.closed == "quit"


def test_expire_never_marks_nothing() -> None:
    h = logged_in()
    h.client_sends(b"RETR 1\r\nRETR 2\r\n")
    assert h.client_sends(b"QUIT\r\n") == b"+OK mailslot signing off (2 messages left)\r\n"
    assert h.committed is None


def test_expire_days_marks_retrieved_messages_at_quit() -> None:
    h = logged_in([MSG1, MSG2, MSG1], options=SessionOptions(expire="30"))
    h.client_sends(b"RETR 1\r\nTOP 2 0\r\nRETR 3\r\nDELE 3\r\n")
    assert h.client_sends(b"QUIT\r\n") == b"+OK mailslot signing off (2 messages left)\r\n"
    # RETR starts the clock, TOP does not; a deleted message needs no mark.
    assert h.committed == frozenset({2})
    assert h.marked_retrieved == frozenset({0})


def test_expire_days_with_nothing_retrieved_commits_nothing() -> None:
    h = logged_in(options=SessionOptions(expire="30"))
    h.client_sends(b"TOP 1 0\r\nQUIT\r\n")
    assert h.committed is None


def test_expire_zero_deletes_what_was_retrieved() -> None:
    h = logged_in([MSG1, MSG2, MSG1], options=SessionOptions(expire="0"))
    h.client_sends(b"RETR 2\r\nTOP 3 1\r\nRSET\r\n")  # RSET undoes DELEs, not RETRs
    assert h.client_sends(b"QUIT\r\n") == b"+OK mailslot signing off (2 messages left)\r\n"
    assert h.committed == frozenset({1})
    assert h.session.statistics().deleted == 1


def test_eof_and_timeout_delete_nothing() -> None:
    h = logged_in()
    h.client_sends(b"DELE 1\r\nDELE 2\r\n")
    h.client_closes()
    assert h.committed is None and h.closed == "eof"
    h2 = logged_in()
    h2.client_sends(b"DELE 1\r\n")
    h2.session.timed_out()
    assert h2.run() == b""  # RFC 1939 §3: no response
    assert h2.committed is None and h2.closed == "timeout"


def test_commit_failure_reports_sys_temp() -> None:
    h = logged_in(commit_fails=True)
    out = h.client_sends(b"DELE 1\r\nQUIT\r\n")
    assert out.endswith(b"-ERR [SYS/TEMP] Some deleted messages were not removed\r\n")
    assert h.session.statistics().deleted == 0


def test_statistics() -> None:
    h = logged_in()
    h.client_sends(b"RETR 1\r\nTOP 2 1\r\nDELE 2\r\nQUIT\r\n")
    stats = h.session.statistics()
    assert (stats.account, stats.retrieved, stats.top, stats.deleted) == (USER, 1, 1, 1)
    assert stats.retrieved_octets == h.entries[0].size
    assert stats.deleted_octets == h.entries[1].size


# ---------------------------------------------------------------- line handling


def test_overlong_line_one_error_tail_never_executed() -> None:
    h = logged_in()
    line = b"NOOP " + b"x" * (MAX_COMMAND_LINE + 10) + b" QUIT\r\n"
    out = h.client_sends(line + b"STAT\r\n")
    assert out.startswith(b"-ERR Line too long\r\n+OK 2 ")
    assert h.closed is None


def test_overlong_line_in_pieces_is_bounded() -> None:
    h = logged_in()
    for _ in range(1000):
        assert h.client_sends(b"y" * 4096) in (b"", b"-ERR Line too long\r\n")
        assert h.session._reader.buffered <= MAX_COMMAND_LINE
    # The overlong line ends at the next LF: "QUIT" is part of it, never run.
    assert h.client_sends(b"QUIT\r\nNOOP\r\n") == b"+OK\r\n"
    assert h.closed is None


def test_line_of_exactly_255_octets_is_accepted() -> None:
    h = SessionHarness()
    line = b"USER " + b"a" * (MAX_COMMAND_LINE - 7) + b"\r\n"
    assert len(line) == MAX_COMMAND_LINE
    assert h.client_sends(line) == b"+OK\r\n"
    assert h.client_sends(b"USER " + b"a" * (MAX_COMMAND_LINE - 6) + b"\r\n") == (
        b"-ERR Line too long\r\n"
    )


def test_nul_byte_rejected() -> None:
    h = logged_in()
    assert h.client_sends(b"QUIT\x00\r\n") == b"-ERR NUL byte in command\r\n"
    assert h.closed is None


def test_bare_lf_lines() -> None:
    h = logged_in()
    assert h.client_sends(b"NOOP\nSTAT\r\nNOOP\n") == (
        b"+OK\r\n+OK 2 " + str(sum(e.size for e in h.entries)).encode() + b"\r\n+OK\r\n"
    )


def test_pipelining_answers_in_order_whole_and_bytewise() -> None:
    script = b"CAPA\r\nUSER mrose\r\nPASS tanstaaf\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 1\r\nDELE 1\r\nQUIT\r\n"
    whole = SessionHarness(messages=[MSG1, MSG2])
    bytewise = SessionHarness(messages=[MSG1, MSG2])
    a = whole.client_sends(script)
    b = bytewise.client_sends(script, byte_at_a_time=True)
    assert a == b
    assert a.count(b"+OK") == 10
    assert whole.committed == bytewise.committed == frozenset({0})


def test_too_many_bad_commands_end_session() -> None:
    h = SessionHarness(options=SessionOptions(max_bad_commands=3))
    assert h.client_sends(b"BAD\r\nBAD\r\n").count(b"-ERR Unknown") == 2
    assert (
        h.client_sends(b"BAD\r\nNOOP\r\n") == b"-ERR Too many bad commands, closing connection\r\n"
    )
    assert h.closed == "bad-commands"


def test_good_command_resets_bad_count() -> None:
    h = SessionHarness(options=SessionOptions(max_bad_commands=3))
    for _ in range(5):
        h.client_sends(b"BAD\r\nBAD\r\nCAPA\r\n")
    assert h.closed is None


def test_driver_misuse_raises() -> None:
    session = Session(options=SessionOptions(), greeting_timestamp="")
    session.receive_data(b"USER a\r\nPASS b\r\n")
    session.next_event()
    with pytest.raises(LocalProtocolError):
        session.next_event()
    with pytest.raises(LocalProtocolError):
        session.send(CommitDone())


# ---------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_first_response_lines_are_bounded(lines: list[bytes]) -> None:
    h = logged_in()
    out = h.client_sends(b"\r\n".join(lines) + b"\r\n")
    for response in out.split(b"\r\n"):
        assert len(response) + 2 <= MAX_RESPONSE_LINE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
def test_any_message_survives_retr(message: bytes, chunk: int) -> None:
    h = logged_in([message], chunk_size=chunk)
    out = h.client_sends(b"RETR 1\r\n")
    body = unstuff_multiline(out)
    expected = normalise(message).replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert body == expected
    assert len(body) == h.entries[0].size
    assert out.startswith(f"+OK {len(body)} octets\r\n".encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_raises(data: bytes) -> None:
    h = logged_in()
    h.client_sends(data)
    h.client_sends(b"\r\n")
    assert h.session.state in (State.TRANSACTION, State.CLOSED, State.UPDATE)


def test_message_requested_carries_top_lines() -> None:
    h = logged_in()
    h.client_sends(b"TOP 1 7\r\n")
    assert any(isinstance(r, MessageRequested) and r.top_lines == 7 for r in h.requests)


# ---------------------------------------------------------------- STLS and SASL

TLS_OPTIONS = SessionOptions(
    stls=True, plaintext_without_tls=False, sasl_mechanisms=("SCRAM-SHA-256", "PLAIN")
)


def test_capa_before_and_after_stls() -> None:
    h = SessionHarness(options=TLS_OPTIONS)
    before = h.client_sends(b"CAPA\r\n")
    assert b"\r\nSTLS\r\n" in before
    assert b"\r\nUSER\r\n" not in before
    assert b"\r\nSASL SCRAM-SHA-256\r\n" in before
    assert h.client_sends(b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    after = h.client_sends(b"CAPA\r\n")
    assert b"STLS" not in after
    assert b"\r\nUSER\r\n" in after
    assert b"\r\nSASL SCRAM-SHA-256 PLAIN\r\n" in after


@pytest.mark.parametrize("tail", [b"CAPA\r\n", b"USER mrose\r\n", b"NOOP\r\nQUIT\r\n"])
def test_input_pipelined_after_stls_is_discarded(tail: bytes) -> None:
    h = SessionHarness(options=TLS_OPTIONS)
    out = h.client_sends(b"STLS\r\n" + tail)
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert h.tls_started == 1
    assert h.session.tls and h.closed is None
    # Nothing of the tail was run: no USER is remembered, no QUIT happened.
    assert h.client_sends(b"PASS tanstaaf\r\n") == b"-ERR Send USER first\r\n"


def test_stls_rules() -> None:
    h = SessionHarness(options=TLS_OPTIONS)
    assert h.client_sends(b"STLS now\r\n") == b"-ERR Too many arguments\r\n"
    h.client_sends(b"STLS\r\n")
    assert h.client_sends(b"STLS\r\n") == b"-ERR TLS is already active\r\n"
    h.login()
    assert h.client_sends(b"STLS\r\n").startswith(b"-ERR Command not valid in TRANSACTION")
    assert h.tls_started == 1


def test_plaintext_sasl_refused_before_tls() -> None:
    h = SessionHarness(options=TLS_OPTIONS)
    assert (
        h.client_sends(b"AUTH\r\n")
        == b"+OK Supported SASL mechanisms follow\r\nSCRAM-SHA-256\r\n.\r\n"
    )
    assert h.client_sends(b"AUTH PLAIN\r\n").startswith(
        b"-ERR [AUTH] Plaintext authentication disallowed"
    )
    assert h.client_sends(b"AUTH NOPE\r\n") == b"-ERR Unsupported SASL mechanism\r\n"


SASL_OPTIONS = SessionOptions(sasl_mechanisms=("PLAIN",))
PLAIN_OK = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())


def test_sasl_initial_response() -> None:
    h = SessionHarness(messages=[MSG1], options=SASL_OPTIONS)
    out = h.client_sends(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert out.startswith(b"+OK Maildrop has 1 messages")


def test_sasl_continuation() -> None:
    h = SessionHarness(messages=[MSG1], options=SASL_OPTIONS)
    assert h.client_sends(b"auth plain\r\n") == b"+ \r\n"
    assert h.client_sends(PLAIN_OK + b"\r\n").startswith(b"+OK Maildrop has 1 messages")


def test_sasl_cancel_bad_base64_and_wrong_password() -> None:
    h = SessionHarness(options=replace(SASL_OPTIONS, max_auth_failures=10))
    assert (
        h.client_sends(b"AUTH PLAIN\r\n*\r\n") == b"+ \r\n-ERR [AUTH] Authentication cancelled\r\n"
    )
    assert (
        h.client_sends(b"AUTH PLAIN\r\n%%%\r\n")
        == b"+ \r\n-ERR [AUTH] Invalid base64 in SASL response\r\n"
    )
    assert (
        h.client_sends(b"AUTH PLAIN ###\r\n")
        == b"-ERR [AUTH] Invalid base64 in initial response\r\n"
    )
    assert h.client_sends(b"AUTH PLAIN AGEAYg==\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert h.session.state is State.AUTHORIZATION
    assert h.client_sends(b"NOOP\r\n").startswith(b"-ERR Command not valid")  # back to commands


def test_sasl_line_limit() -> None:
    h = SessionHarness(options=replace(SASL_OPTIONS, max_sasl_line=20_000))
    token = base64.b64encode(b"\0x\0" + b"y" * 8000)  # an OAuth-sized response
    assert (
        h.client_sends(b"AUTH PLAIN\r\n" + token + b"\r\n")
        == b"+ \r\n-ERR [AUTH] Authentication failed\r\n"
    )
    assert h.session._reader.limit == MAX_COMMAND_LINE
    out = h.client_sends(b"AUTH PLAIN\r\n" + b"A" * 30_000 + b"\r\nNOOP\r\n")
    assert (
        out
        == b"+ \r\n-ERR [AUTH] SASL response too long\r\n-ERR Command not valid in AUTHORIZATION state. Allowed: USER PASS AUTH UTF8 LANG CAPA QUIT\r\n"
    )


def test_sasl_empty_initial_response() -> None:
    h = SessionHarness(options=SASL_OPTIONS)
    h.client_sends(b"AUTH PLAIN =\r\n")
    assert h.requests[0].initial_response == b""  # type: ignore[attr-defined]
