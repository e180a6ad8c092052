"""Migrated maildrops served over the wire: a client that left its mail on
the old server sees the same UIDLs from mailslot, so it downloads nothing
twice, and RETR sends the messages it would have got before."""

from __future__ import annotations

import poplib
from pathlib import Path

import pytest

from mailslot.config import Settings
from mailslot.server.app import open_store
from mailslot.store.migrate import (
    ImportReport,
    import_courier_maildir,
    import_dovecot_maildir,
    import_mbox,
)
from tests.helpers.server import add_user, make_settings, running

PASSWORD = "migrated pass"
VALIDITY = 1700000000  # 0x6553f100

MESSAGES = {
    "1700000001.M1P10.old.example.org,S=41,W=45": b"From: a@example.org\nSubject: one\n\nHello.\n",
    "1700000002.M1P11.old.example.org,S=71": (
        b"From: b@example.org\r\nSubject: two\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
    ),
    "1700000003.M1P12.old.example.org": b"From: c@example.org\nSubject: three\n\nno final newline",
    "1700000004.M1P13.old.example.org": (
        b"From: d@example.org\nSubject: four\nContent-Type: text/plain; charset=utf-8\n\n"
        + "8-bit body \u2014 \u00e9\n".encode()
        + (b"z" * 76 + b"\n") * 1000
    ),
}


def on_the_wire(message: bytes) -> bytes:
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path / "data")
    add_user(s, "alice@example.org", PASSWORD)
    return s


def target_for(settings: Settings, name: str) -> Path:
    """What ``mailslot import`` computes from the account."""
    user, _, domain = name.partition("@")
    return Path(open_store(settings).maildir_path(user, domain or settings.default_domain))


def fetch_all(settings: Settings, name: str) -> tuple[list[bytes], list[int], list[bytes]]:
    """UIDL, LIST and RETR of every message, as a POP3 client sees them."""
    with running(settings) as server:
        client = poplib.POP3(*server.address, timeout=30)
        try:
            client.user(name)
            client.pass_(PASSWORD)
            uidls = [line.split(b" ", 1)[1] for line in client.uidl()[1]]
            sizes = [int(line.split(b" ")[1]) for line in client.list()[1]]
            bodies = []
            for number in range(1, len(uidls) + 1):
                _response, lines, _octets = client.retr(number)
                bodies.append(b"\r\n".join(lines) + b"\r\n")
            client.quit()
        finally:
            client.close()
    return uidls, sizes, bodies


def test_dovecot_maildir_served_with_dovecot_uidls(tmp_path: Path, settings: Settings) -> None:
    source = tmp_path / "dovecot" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (source / sub).mkdir(parents=True)
    names = list(MESSAGES)
    (source / "cur" / f"{names[0]}:2,S").write_bytes(MESSAGES[names[0]])
    (source / "cur" / f"{names[1]}:2,RS").write_bytes(MESSAGES[names[1]])
    (source / "cur" / f"{names[2]}:2,").write_bytes(MESSAGES[names[2]])
    (source / "new" / names[3]).write_bytes(MESSAGES[names[3]])
    (source / "dovecot-uidlist").write_text(
        f"3 V{VALIDITY} N12 G3085f01b7f11094c501100008c4a11c1\n"
        f"3 W45 :{names[0]}\n"
        f"7 :{names[1]}\n"
        f"9 PXUIDL-kept-by-dovecot :{names[2]}\n"
        f"11 :{names[3]}\n"
    )
    report = import_dovecot_maildir(
        source, target_for(settings, "alice@example.org"), locks=open_store(settings).locks
    )
    assert (report.messages, report.uidls_kept, report.skipped) == (4, 4, [])

    uidls, sizes, bodies = fetch_all(settings, "alice@example.org")
    # What Dovecot listed with pop3_uidl_format = %08Xu%08Xv (and the saved P).
    assert uidls == [
        b"000000036553f100",
        b"000000076553f100",
        b"XUIDL-kept-by-dovecot",
        b"0000000b6553f100",
    ]
    expected = [on_the_wire(m) for m in MESSAGES.values()]
    assert bodies == expected
    assert sizes == [len(m) for m in expected]
    assert report.octets == sum(sizes)
    # A second session: nothing changed, so nothing would be fetched again.
    assert fetch_all(settings, "alice@example.org")[0] == uidls


def test_courier_maildir_served_with_courier_uidls(tmp_path: Path, settings: Settings) -> None:
    source = tmp_path / "courier" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (source / sub).mkdir(parents=True)
    names = list(MESSAGES)
    for name in names[:3]:
        (source / "cur" / f"{name}:2,S").write_bytes(MESSAGES[name])
    (source / "new" / names[3]).write_bytes(MESSAGES[names[3]])
    (source / "courierpop3dsizelist").write_bytes(
        f"/3 4 {VALIDITY}\n"
        f"{names[0]}:2,S 47 1:{VALIDITY}:0\n"
        f"{names[1]}:2,S 80 2:{VALIDITY}:0\n"
        f"{names[2]}:2,S 52 3:{VALIDITY}:0\n".encode()
    )
    report = import_courier_maildir(
        source, target_for(settings, "alice@example.org"), locks=open_store(settings).locks
    )
    assert (report.messages, report.uidls_kept, report.uidls_new) == (4, 3, 1)

    uidls, sizes, bodies = fetch_all(settings, "alice@example.org")
    assert uidls[:3] == [f"UID{n}-{VALIDITY}".encode() for n in (1, 2, 3)]
    assert uidls[3] not in uidls[:3]
    assert bodies == [on_the_wire(m) for m in MESSAGES.values()]
    assert sizes == [len(body) for body in bodies]


def test_mbox_served_with_x_uidls(tmp_path: Path, settings: Settings) -> None:
    bodies_in = list(MESSAGES.values())
    mbox = tmp_path / "alice.mbox"
    parts = []
    for number, body in enumerate(bodies_in, start=1):
        parts.append(f"From sender{number}@example.org Mon Nov 13 22:13:2{number} 2023\n".encode())
        if number != 2:
            parts.append(f"X-UIDL: qpopper-{number:04d}\n".encode())
        parts.append(body.replace(b"\nFrom ", b"\n>From "))
        parts.append(b"\n" if body.endswith(b"\n") else b"\n\n")
    mbox.write_bytes(b"".join(parts))

    report: ImportReport = import_mbox(
        mbox, target_for(settings, "alice@example.org"), locks=open_store(settings).locks
    )
    assert (report.messages, report.uidls_kept, report.uidls_new) == (4, 3, 1)

    uidls, sizes, bodies = fetch_all(settings, "alice@example.org")
    assert [uidls[0], uidls[2], uidls[3]] == [b"qpopper-0001", b"qpopper-0003", b"qpopper-0004"]
    expected = [
        on_the_wire((b"X-UIDL: qpopper-%04d\n" % n if n != 2 else b"") + body)
        for n, body in enumerate(bodies_in, start=1)
    ]
    assert bodies == expected
    assert sizes == [len(m) for m in expected]
