"""An in-memory driver for the sans-I/O session: bytes in, bytes out.

``SessionHarness`` answers the session's requests the way the real driver
does, from a list of messages held in memory, so unit tests can speak POP3
byte for byte without sockets or disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailslot.pop3.events import (
    ApopRequested,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    CloseRequested,
    CommitDone,
    CommitFailed,
    CommitRequested,
    LoginDelayed,
    MaildropBusy,
    MaildropFailed,
    MaildropOpened,
    MaildropRequested,
    MessageData,
    MessageEnd,
    MessageOpened,
    MessageRequested,
    MessageUnavailable,
    NeedData,
    SaslChallenge,
    SaslRequested,
    SaslResponse,
    TlsRequested,
    TlsStarted,
)
from mailslot.pop3.session import Session, SessionOptions
from mailslot.wire import wire_size

RFC_TIMESTAMP = "<1896.697170952@dbc.mtview.ca.us>"
USER = "mrose"
PASSWORD = "tanstaaf"


@dataclass(frozen=True, slots=True)
class Entry:
    uid: str
    size: int


@dataclass
class SessionHarness:
    messages: list[bytes] = field(default_factory=list)
    options: SessionOptions = field(default_factory=SessionOptions)
    chunk_size: int = 1 << 16
    maildrop_answer: str = "open"  # open | busy | delayed | failed | perm
    commit_fails: bool = False
    gone: set[int] = field(default_factory=set)
    committed: frozenset[int] | None = None
    marked_retrieved: frozenset[int] | None = None
    closed: str | None = None
    requests: list[object] = field(default_factory=list)
    tls_started: int = 0
    sasl_mechanism: str = ""

    def __post_init__(self) -> None:
        self.session = Session(options=self.options, greeting_timestamp=RFC_TIMESTAMP)
        self.greeting = self.session.data_to_send()
        self.entries = [
            Entry(uid=f"uid-{n}", size=wire_size([m])) for n, m in enumerate(self.messages, 1)
        ]

    def client_sends(self, data: bytes, *, byte_at_a_time: bool = False) -> bytes:
        if not byte_at_a_time:
            self.session.receive_data(data)
            return self.run()
        out = []
        for i in range(len(data)):
            self.session.receive_data(data[i : i + 1])
            out.append(self.run())
        return b"".join(out)

    def client_closes(self) -> bytes:
        self.session.receive_eof()
        return self.run()

    def login(self) -> bytes:
        return self.client_sends(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())

    def run(self) -> bytes:
        session = self.session
        out: list[bytes] = []
        while True:
            event = session.next_event()
            out.append(session.data_to_send())
            self.requests.append(event)
            match event:
                case NeedData():
                    break
                case CloseRequested(reason=reason):
                    self.closed = reason
                    break
                case AuthRequested(username=username, password=password):
                    if (username, password) == (USER, PASSWORD):
                        session.send(AuthSucceeded(account=username))
                    else:
                        session.send(AuthFailed())
                case ApopRequested():
                    session.send(AuthFailed())
                case SaslRequested(mechanism=mechanism, initial_response=initial):
                    self.sasl_mechanism = mechanism
                    if initial is None:
                        session.send(SaslChallenge(b""))
                    else:
                        self._sasl_step(initial)
                case SaslResponse(data=data):
                    self._sasl_step(data)
                case TlsRequested():
                    self.tls_started += 1
                    session.send(TlsStarted())
                case MaildropRequested():
                    session.send(self._maildrop_answer())
                case MessageRequested(index=index):
                    self._stream(index, out)
                case CommitRequested(indexes=indexes, retrieved=retrieved):
                    if self.commit_fails:
                        session.send(CommitFailed())
                    else:
                        self.committed = indexes
                        self.marked_retrieved = retrieved
                        session.send(CommitDone())
        return b"".join(out)

    def _sasl_step(self, data: bytes) -> None:
        """A toy PLAIN: enough to exercise the session's SASL framing."""
        parts = data.split(b"\0")
        if len(parts) == 3 and (parts[1], parts[2]) == (USER.encode(), PASSWORD.encode()):
            self.session.send(AuthSucceeded(account=USER))
        else:
            self.session.send(AuthFailed())

    def _maildrop_answer(
        self,
    ) -> MaildropOpened | MaildropBusy | LoginDelayed | MaildropFailed:
        match self.maildrop_answer:
            case "busy":
                return MaildropBusy()
            case "delayed":
                return LoginDelayed()
            case "failed":
                return MaildropFailed()
            case "perm":
                return MaildropFailed(permanent=True)
        return MaildropOpened(messages=self.entries)

    def _stream(self, index: int, out: list[bytes]) -> None:
        session = self.session
        if index in self.gone:
            session.send(MessageUnavailable())
            return
        session.send(MessageOpened())
        data = self.messages[index]
        for start in range(0, len(data), self.chunk_size):
            if session.message_complete:
                break
            session.send(MessageData(data[start : start + self.chunk_size]))
            out.append(session.data_to_send())
        session.send(MessageEnd())


def unstuff_multiline(response: bytes) -> bytes:
    """The body of a multi-line response: first line and terminator removed,
    dot-stuffing undone (what a client stores)."""
    first, _, rest = response.partition(b"\r\n")
    assert first.startswith(b"+OK"), first
    assert rest.endswith(b"\r\n.\r\n") or rest == b".\r\n", rest[-20:]
    body = rest[: -len(b".\r\n")]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
