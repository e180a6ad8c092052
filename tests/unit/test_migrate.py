"""Migration into mailslot Maildirs (``store/migrate.py``) against real files.

Sources are built by hand the way Dovecot, Courier and mbox writers leave
them; the result is checked through ``MaildirStore``: the UIDLs, their order
and the sizes a POP3 client will see, and the bytes of every message.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot.store import MaildropBusy, migrate
from mailslot.store.maildir import UIDLIST_NAME, MaildirStore, import_uids
from mailslot.store.migrate import (
    ImportReport,
    MigrationError,
    expand_uidl_format,
    import_courier_maildir,
    import_dovecot_maildir,
    import_mbox,
)

NEW_UIDL = re.compile(r"\d+\.m[0-9a-f]{12}")
VALIDITY = 1700000000  # 0x6553f100
GUID = "3085f01b7f11094c501100008c4a11c1"


def on_the_wire(message: bytes) -> bytes:
    """The message as RETR sends it (before dot-stuffing): CRLF line ends."""
    data = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


# --- helpers ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(f"{tmp_path}/mailslot/{{domain}}/{{user}}/Maildir", hostname="mx.test")


@pytest.fixture
def target(store: MaildirStore) -> Path:
    """Where the CLI would import alice@example.org's mail."""
    return Path(store.maildir_path("alice", "example.org"))


def listing(store: MaildirStore) -> list[tuple[str, int]]:
    with store.open("alice", "example.org") as drop:
        return [(m.uid, m.size) for m in drop.messages]


def contents(store: MaildirStore) -> list[bytes]:
    with store.open("alice", "example.org") as drop:
        out = []
        for index in range(len(drop.messages)):
            with drop.open_message(index) as file:
                out.append(file.read())
        return out


def maildir(root: Path, files: dict[str, bytes]) -> Path:
    """A Maildir holding ``files`` ({"cur/<name>" or "new/<name>": content})."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def check_report(
    report: ImportReport, *, messages: int, kept: int, octets: int, skipped: int = 0
) -> None:
    assert report.messages == messages
    assert report.uidls_kept == kept
    assert report.uidls_new == messages - kept
    assert report.octets == octets
    assert len(report.skipped) == skipped, report.skipped


# Messages with the line-end variety real maildirs hold.
M1 = b"From: a@example.org\nSubject: one\n\nHello.\n"
M2 = b"From: b@example.org\r\nSubject: two, CRLF\r\n\r\n.leading dot\r\nend\r\n"
M3 = b"From: c@example.org\nSubject: three\n\nno final newline"
M4 = b"From: d@example.org\nSubject: four\n\n" + b"x" * 5000 + b"\n"
M6 = b"From: f@example.org\nSubject: six\n\nstill in new/\n"
M9 = b"From: i@example.org\nSubject: nine\n\ndelivered after Dovecot's last session\n"

B1 = "1700000001.M100P200.mx.example.org,S=41,W=45"
B2 = "1700000002.M100P201.mx.example.org,S=62"
B3 = "1700000003.M100P202.mx.example.org"
B4 = "1700000004.M100P203.mx.example.org,S=5036,W=5040"
B5 = "1700000005.M100P204.mx.example.org"  # expunged: listed, no file
B6 = "1700000006.M100P205.mx.example.org,S=48"
B9 = "1700000009.M100P206.mx.example.org"

DOVECOT_UIDLIST = f"""\
3 V{VALIDITY} N10 G{GUID}
1 W45 :{B1}
2 :{B2}
3 P :{B3}
4 PUID-legacy-4 W5040 :{B4}
5 G{"ab" * 16} :{B5}
6 :{B6}
"""


@pytest.fixture
def dovecot(tmp_path: Path) -> Path:
    """A Dovecot INBOX: flags in cur/, unseen mail in new/, one expunged
    entry, one message Dovecot has not listed yet."""
    root = maildir(
        tmp_path / "dovecot" / "Maildir",
        {
            f"cur/{B1}:2,S": M1,
            f"cur/{B2}:2,RS": M2,
            f"cur/{B3}:2,": M3,
            f"cur/{B4}:2,ST": M4,
            f"new/{B6}": M6,
            f"new/{B9}": M9,
        },
    )
    (root / "dovecot-uidlist").write_text(DOVECOT_UIDLIST)
    (root / "dovecot.index.log").write_bytes(b"\x01\x02binary index")
    return root


DOVECOT_EXPECTED = [
    ("000000016553f100", M1),
    ("000000026553f100", M2),
    (B3, M3),  # "P" with no value: the base file name
    ("UID-legacy-4", M4),  # saved by pop3_save_uidl or an earlier migration
    ("000000066553f100", M6),
]


# --- pop3_uidl_format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "fields", "expected"),
    [
        # The 2.3 default: %08Xu%08Xv is lower-case hex (printf "%llx"), zero padded.
        ("%08Xu%08Xv", {"uid": 1, "uidvalidity": VALIDITY}, "00000001" + "6553f100"),
        ("%08Xu%08Xv", {"uid": 0xABCDEF, "uidvalidity": 7}, "00abcdef" + "00000007"),
        ("%08Xu%08Xv", {"uid": 4294967295, "uidvalidity": 1}, "ffffffff" + "00000001"),
        ("%u", {"uid": 42, "uidvalidity": VALIDITY}, "42"),
        ("%v", {"uid": 42, "uidvalidity": VALIDITY}, "1700000000"),
        ("%u.%v", {"uid": 42, "uidvalidity": VALIDITY}, "42.1700000000"),
        ("%{uid}-%{uidvalidity}", {"uid": 42, "uidvalidity": 9}, "42-9"),
        ("%f", {"uid": 1, "uidvalidity": 1, "filename": B1}, B1),
        ("%{filename}", {"uid": 1, "uidvalidity": 1, "filename": B1}, B1),
        ("%g", {"uid": 1, "uidvalidity": 1, "filename": B1}, B1),  # no G: the file name
        ("%g", {"uid": 1, "uidvalidity": 1, "filename": B1, "guid": GUID}, GUID),
        (
            "%m",
            {"uid": 1, "uidvalidity": 1, "md5": "d41d8cd98f00b204e9800998ecf8427e"},
            "d41d8cd98f00b204e9800998ecf8427e",
        ),
        ("%Xu", {"uid": 255, "uidvalidity": 1}, "ff"),
        ("%XUu", {"uid": 255, "uidvalidity": 1}, "FF"),  # modifiers apply in order
        ("%UXu", {"uid": 255, "uidvalidity": 1}, "ff"),
        ("%04Xu", {"uid": 0x12345, "uidvalidity": 1}, "12345"),  # zero padding never cuts
        ("%4u", {"uid": 123456, "uidvalidity": 1}, "1234"),  # a plain width does
        ("%-2u", {"uid": 123456, "uidvalidity": 1}, "12"),
        ("%2.f", {"uid": 1, "uidvalidity": 1, "filename": "abcdef"}, "cdef"),
        ("%-2.f", {"uid": 1, "uidvalidity": 1, "filename": "abcdef"}, "ef"),
        ("%2.3f", {"uid": 1, "uidvalidity": 1, "filename": "abcdef"}, "cde"),
        ("%.-1f", {"uid": 1, "uidvalidity": 1, "filename": "abcdef"}, "abcde"),
        ("%Lf", {"uid": 1, "uidvalidity": 1, "filename": "AbC"}, "abc"),
        ("%Uf", {"uid": 1, "uidvalidity": 1, "filename": "AbC"}, "ABC"),
        ("%Rf", {"uid": 1, "uidvalidity": 1, "filename": "abc"}, "cba"),
        ("%Mu", {"uid": 1, "uidvalidity": 1}, hashlib.md5(b"1").hexdigest()),
        ("%Xf", {"uid": 1, "uidvalidity": 1, "filename": "name"}, "0"),  # not a number
        ("x%%u", {"uid": 1, "uidvalidity": 1}, "x%u"),
        ("%u%", {"uid": 1, "uidvalidity": 1}, "1"),  # a dangling % is dropped
        # Dovecot 2.4 syntax.
        (
            "%{uid | hex(8)}%{uidvalidity | hex(8)}",
            {"uid": 1, "uidvalidity": VALIDITY},
            "000000016553f100",
        ),
        ("%{uid|hex}", {"uid": 255, "uidvalidity": 1}, "ff"),
        ("%{uid | hex(2)}", {"uid": 0x1234, "uidvalidity": 1}, "34"),
        ("%{uid | hex | upper}", {"uid": 255, "uidvalidity": 1}, "FF"),
        ("%{filename | lower}", {"uid": 1, "uidvalidity": 1, "filename": "AbC"}, "abc"),
    ],
)
def test_uidl_format_expansion(fmt: str, fields: dict[str, object], expected: str) -> None:
    assert expand_uidl_format(fmt, **fields) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fmt",
    [
        "",
        "%08xu",  # no "x" modifier in Dovecot: the unknown variable %x
        "%q",
        "%n",
        "%{hostname}",
        "%{uid",
        "%Hu",  # a Dovecot modifier we do not reproduce
        "%{uid | sha1}",
        "%{uid | lower(2)}",
        "%{uid | hex(x)}",
    ],
)
def test_uidl_format_rejects(fmt: str) -> None:
    with pytest.raises(ValueError):
        expand_uidl_format(fmt, uid=1, uidvalidity=1)


def test_uidl_format_md5_needs_a_value() -> None:
    with pytest.raises(ValueError, match="MD5"):
        expand_uidl_format("%m", uid=1, uidvalidity=1)
    with pytest.raises(ValueError, match="not a number"):
        expand_uidl_format("%{filename | hex}", uid=1, uidvalidity=1, filename="abc")


# --- Dovecot Maildir -----------------------------------------------------------------


def test_dovecot_keeps_uidls_order_sizes_and_bytes(
    dovecot: Path, target: Path, store: MaildirStore
) -> None:
    before = tree(dovecot)
    report = import_dovecot_maildir(dovecot, target, locks=store.locks)
    sources = [m for _uid, m in DOVECOT_EXPECTED] + [M9]
    check_report(report, messages=6, kept=5, octets=sum(len(on_the_wire(m)) for m in sources))
    assert report.source == str(dovecot)
    got = listing(store)
    assert got[:5] == [(uid, len(on_the_wire(m))) for uid, m in DOVECOT_EXPECTED]
    assert NEW_UIDL.fullmatch(got[5][0]) and got[5][1] == len(on_the_wire(M9))
    assert contents(store) == sources
    assert tree(dovecot) == before  # the source is only read
    # Base names carry over (",W=" added where missing), flags too.
    assert sorted(os.listdir(target / "cur")) == sorted(
        [
            f"{B1}:2,S",
            f"{B2},W={len(on_the_wire(M2))}:2,RS",
            f"{B3},W={len(on_the_wire(M3))}:2,",
            f"{B4}:2,ST",
            f"{B6},W={len(on_the_wire(M6))}:2,",
            f"{B9},W={len(on_the_wire(M9))}:2,",
        ]
    )
    assert os.listdir(target / "tmp") == []
    # Stable: a second session lists the same.
    assert listing(store) == got


def test_maildir_plus_plus_folders_stay_behind(
    dovecot: Path, target: Path, store: MaildirStore
) -> None:
    maildir(dovecot / ".Sent", {"cur/1690000000.x:2,S": M1})
    maildir(dovecot / ".Trash", {})
    (dovecot / ".not-a-folder").mkdir()
    report = import_dovecot_maildir(dovecot, target, locks=store.locks)
    assert report.skipped == [
        "2 Maildir++ folder(s) not imported, POP3 serves only INBOX: .Sent, .Trash"
    ]
    assert report.messages == 6


def test_dovecot_uidl_format_variants(tmp_path: Path, store: MaildirStore) -> None:
    names = ["1690000000.M1P1.a", "1690000001.M2P1.b", "1690000002.M3P1.c"]
    root = maildir(tmp_path / "src", {f"cur/{n}:2,S": M1 for n in names})
    (root / "dovecot-uidlist").write_text(
        f"3 V1234 N300 G{GUID}\n7 :{names[0]}\n42 G0123456789abcdef :{names[1]}\n255 :{names[2]}\n"
    )
    cases = {
        "%08Xu%08Xv": ["00000007000004d2", "0000002a000004d2", "000000ff000004d2"],
        "%u": ["7", "42", "255"],
        "%v-%u": ["1234-7", "1234-42", "1234-255"],
        "%f": names,
        "%g": [names[0], "0123456789abcdef", names[2]],
        "%{uid | hex(8)}%{uidvalidity | hex(8)}": [
            "00000007000004d2",
            "0000002a000004d2",
            "000000ff000004d2",
        ],
    }
    for number, (fmt, expected) in enumerate(cases.items()):
        user_target = Path(store.maildir_path(f"u{number}", "example.org"))
        report = import_dovecot_maildir(root, user_target, uidl_format=fmt, locks=store.locks)
        assert report.uidls_kept == 3, (fmt, report)
        with store.open(f"u{number}", "example.org") as drop:
            assert [m.uid for m in drop.messages] == expected, fmt


def test_dovecot_pop3_order_field(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    names = [f"169000000{i}.M{i}P1.h" for i in range(4)]
    root = maildir(tmp_path / "src", {f"cur/{n}:2,": M1 for n in names})
    (root / "dovecot-uidlist").write_text(
        f"3 V9 N5 G{GUID}\n1 O3 :{names[0]}\n2 :{names[1]}\n3 O1 :{names[2]}\n4 O2 :{names[3]}\n"
    )
    import_dovecot_maildir(root, target, uidl_format="%u", locks=store.locks)
    assert [uid for uid, _size in listing(store)] == ["3", "4", "1", "2"]


def test_dovecot_invalid_and_duplicate_uidls_get_new_ones(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    names = [f"169000000{i}.M{i}P1.h" for i in range(6)]
    root = maildir(tmp_path / "src", {f"cur/{n}:2,": M1 for n in names})
    (root / "dovecot-uidlist").write_text(
        f"3 V9 N7 G{GUID}\n"
        f"1 Psame :{names[0]}\n"
        f"2 P{'x' * 71} :{names[1]}\n"  # too long for RFC 1939
        f"3 Psame :{names[2]}\n"  # duplicate: the first keeps it
        f"4 P\u00e9t\u00e9 :{names[3]}\n"  # not 0x21-0x7E
        f"5 :{names[4]}\n"
        f"6 Psame-not :{names[5]}\n"
    )
    report = import_dovecot_maildir(root, target, uidl_format="%u", locks=store.locks)
    check_report(report, messages=6, kept=3, octets=6 * len(on_the_wire(M1)), skipped=3)
    assert "uid 2 (" in report.skipped[0] and "not a valid POP3 UIDL" in report.skipped[0]
    assert "uid 3 (" in report.skipped[1] and "duplicates" in report.skipped[1]
    assert "uid 4 (" in report.skipped[2]
    assert not any("same" in line or "xxx" in line for line in report.skipped)  # no UIDLs
    got = [uid for uid, _size in listing(store)]
    assert got[0] == "same" and got[4] == "5" and got[5] == "same-not"
    assert all(NEW_UIDL.fullmatch(uid) for uid in (got[1], got[2], got[3]))
    assert len(set(got)) == 6


def test_dovecot_md5_format_keeps_only_saved_uidls(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    names = ["1690000000.M1P1.a", "1690000001.M2P1.b"]
    root = maildir(tmp_path / "src", {f"cur/{n}:2,": M1 for n in names})
    (root / "dovecot-uidlist").write_text(
        f"3 V9 N3 G{GUID}\n1 Pabcdef0123 :{names[0]}\n2 :{names[1]}\n"
    )
    report = import_dovecot_maildir(root, target, uidl_format="%m", locks=store.locks)
    assert report.uidls_kept == 1 and report.uidls_new == 1
    assert "%m" in report.skipped[0] and names[1] in report.skipped[0]
    got = [uid for uid, _size in listing(store)]
    assert got[0] == "abcdef0123" and NEW_UIDL.fullmatch(got[1])


def test_dovecot_version_1_uidlist(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    root = maildir(tmp_path / "src", {"cur/1690000000.a:2,S": M1, "cur/1690000001.b": M2})
    (root / "dovecot-uidlist").write_text("1 1700000000 3\n1 1690000000.a:2,S\n2 1690000001.b\n")
    import_dovecot_maildir(root, target, locks=store.locks)
    assert [uid for uid, _size in listing(store)] == ["000000016553f100", "000000026553f100"]


def test_dovecot_file_listed_twice_keeps_the_later_uid(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    root = maildir(tmp_path / "src", {"cur/1690000000.a:2,": M1, "cur/1690000001.b:2,": M2})
    (root / "dovecot-uidlist").write_text(
        f"3 V5 N9 G{GUID}\n1 :1690000000.a\n2 :1690000001.b\n8 :1690000000.a\n"
    )
    import_dovecot_maildir(root, target, uidl_format="%u", locks=store.locks)
    assert [uid for uid, _size in listing(store)] == ["2", "8"]


def test_dovecot_without_uidlist(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    root = maildir(tmp_path / "src", {"new/1690000001.b": M2, "cur/1690000000.a:2,": M1})
    report = import_dovecot_maildir(root, target, locks=store.locks)
    check_report(
        report, messages=2, kept=0, octets=len(on_the_wire(M1)) + len(on_the_wire(M2)), skipped=1
    )
    assert "dovecot-uidlist" in report.skipped[0]
    assert contents(store) == [M1, M2]  # delivery order


@pytest.mark.parametrize(
    "uidlist",
    [
        "",  # not even a header: handled like a missing file, see below
        "2 V1 N2\n1 0 :a\n",  # version 2
        "3 V0 N2 G00\n",  # no uidvalidity
        "3 N2\n",
        "3 Vabc N2\n",
        "garbage\n",
        f"3 V1 N9 G{GUID}\n2 :a\n1 :b\n",  # descending uids
        f"3 V1 N9 G{GUID}\nx :a\n",
        f"3 V1 N9 G{GUID}\n1 W12\n",  # no file name
        f"3 V1 N9 G{GUID}\n1 :sub/a\n",
    ],
)
def test_dovecot_broken_uidlist_is_refused_before_the_target_is_touched(
    tmp_path: Path, target: Path, store: MaildirStore, uidlist: str
) -> None:
    root = maildir(tmp_path / "src", {"cur/a:2,": M1, "cur/b:2,": M2})
    (root / "dovecot-uidlist").write_text(uidlist)
    if not uidlist:
        assert import_dovecot_maildir(root, target, dry_run=True, locks=store.locks).uidls_new == 2
        return
    with pytest.raises(MigrationError, match="dovecot-uidlist"):
        import_dovecot_maildir(root, target, locks=store.locks)
    assert not target.exists()


def test_bad_format_or_source_is_refused(
    tmp_path: Path, dovecot: Path, target: Path, store: MaildirStore
) -> None:
    with pytest.raises(MigrationError, match="%x"):
        import_dovecot_maildir(dovecot, target, uidl_format="%08xu%08xv", locks=store.locks)
    with pytest.raises(MigrationError, match="not a Maildir"):
        import_dovecot_maildir(tmp_path, target, locks=store.locks)
    with pytest.raises(MigrationError, match="not a directory"):
        import_courier_maildir(tmp_path / "missing", target, locks=store.locks)
    assert not target.exists()


def test_dry_run_writes_nothing_and_reports_the_same(
    dovecot: Path, target: Path, store: MaildirStore
) -> None:
    dry = import_dovecot_maildir(dovecot, target, dry_run=True, locks=store.locks)
    assert not target.exists()
    real = import_dovecot_maildir(dovecot, target, locks=store.locks)
    assert dry == real
    # A dry run against a filled target tells the refusal in advance.
    with pytest.raises(MigrationError, match="already holds messages"):
        import_dovecot_maildir(dovecot, target, dry_run=True, locks=store.locks)


def test_importing_twice_is_refused_and_merge_adds_nothing(
    dovecot: Path, target: Path, store: MaildirStore
) -> None:
    import_dovecot_maildir(dovecot, target, locks=store.locks)
    before, files = listing(store), sorted(os.listdir(target / "cur"))
    with pytest.raises(MigrationError, match="already holds messages"):
        import_dovecot_maildir(dovecot, target, locks=store.locks)
    again = import_dovecot_maildir(dovecot, target, merge=True, locks=store.locks)
    check_report(again, messages=0, kept=0, octets=0, skipped=6)
    assert all("already in the target" in line for line in again.skipped)
    assert listing(store) == before
    assert sorted(os.listdir(target / "cur")) == files


def test_merge_keeps_existing_messages_first(
    dovecot: Path, target: Path, store: MaildirStore
) -> None:
    store.deliver("alice", "example.org", io.BytesIO(b"Subject: already here\n\nhi\n"))
    existing = listing(store)  # the uid a client may already have seen
    report = import_dovecot_maildir(dovecot, target, merge=True, locks=store.locks)
    assert report.messages == 6
    got = listing(store)
    assert got[0] == existing[0]
    assert [uid for uid, _size in got[1:6]] == [uid for uid, _m in DOVECOT_EXPECTED]


def test_a_pop3_session_blocks_the_import(dovecot: Path, target: Path, store: MaildirStore) -> None:
    with store.open("alice", "example.org"):
        with pytest.raises(MigrationError, match="in use"):
            import_dovecot_maildir(dovecot, target, locks=store.locks)
        assert os.listdir(target / "cur") == os.listdir(target / "tmp") == []
    import_dovecot_maildir(dovecot, target, locks=store.locks)
    assert [uid for uid, _size in listing(store)][:5] == [u for u, _m in DOVECOT_EXPECTED]


def test_no_session_can_open_the_maildrop_before_the_uid_list_is_written(
    dovecot: Path, target: Path, store: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = import_uids
    attempts: list[str] = []

    def checked(*args: object, **kwargs: object) -> None:
        with pytest.raises(MaildropBusy):
            store.open("alice", "example.org")  # a POP3 session trying to get in
        attempts.append("refused")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate, "import_uids", checked)
    report = import_dovecot_maildir(dovecot, target, locks=store.locks)
    assert attempts == ["refused"]
    with store.open("alice", "example.org") as drop:
        assert len(drop.messages) == report.messages


def test_a_copy_failure_leaves_nothing_behind(
    dovecot: Path, target: Path, store: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(MigrationError, match="No space left"):
        import_dovecot_maildir(dovecot, target, locks=store.locks)
    assert os.listdir(target / "cur") == os.listdir(target / "tmp") == []


def test_in_place_import_writes_only_the_uid_list(dovecot: Path, tmp_path: Path) -> None:
    """mailslot pointed at the maildirs Dovecot served: nothing to copy."""
    store = MaildirStore(f"{tmp_path}/{{user}}/Maildir")
    before = tree(dovecot)
    report = import_dovecot_maildir(dovecot, dovecot, locks=store.locks)
    assert report.messages == 6 and report.uidls_kept == 5
    after = tree(dovecot)
    assert set(after) - set(before) == {UIDLIST_NAME}
    assert all(after[name] == data for name, data in before.items())
    with store.open("dovecot", "") as drop:
        assert [m.uid for m in drop.messages][:5] == [u for u, _m in DOVECOT_EXPECTED]
        assert [m.size for m in drop.messages][:5] == [
            len(on_the_wire(m)) for _u, m in DOVECOT_EXPECTED
        ]
    with pytest.raises(MigrationError, match="already served"):
        import_dovecot_maildir(dovecot, dovecot, locks=store.locks)
    assert import_dovecot_maildir(dovecot, dovecot, merge=True, locks=store.locks).messages == 0


def test_vanished_and_oddly_named_files_are_skipped(
    tmp_path: Path, target: Path, store: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = maildir(tmp_path / "src", {"cur/1690000000.a:2,": M1, "cur/1690000001.b:2,": M2})
    (root / "cur" / "1690000002.c\nd:2,").write_bytes(M3)
    (root / "dovecot-uidlist").write_text(f"3 V9 N3 G{GUID}\n1 :1690000000.a\n2 :1690000001.b\n")
    real_chunks = migrate._file_chunks

    def vanishing(path: str) -> Iterator[bytes]:
        if path.endswith("1690000000.a:2,"):
            os.unlink(path)
        return real_chunks(path)

    monkeypatch.setattr(migrate, "_file_chunks", vanishing)
    report = import_dovecot_maildir(root, target, uidl_format="%u", locks=store.locks)
    assert report.messages == 1
    assert any("vanished" in line for line in report.skipped)
    assert any("line end" in line for line in report.skipped)
    assert listing(store) == [("2", len(on_the_wire(M2)))]


# --- Courier Maildir ----------------------------------------------------------------

C1 = "1690000100.M1P1V0000000000000803I00000000000C8E87.mail.example.org,S=41"
C2 = "1690000200.M1P2.mail.example.org,S=62"
C3 = "1690000300.M1P3.mail.example.org"
C4 = "1690000400.M1P4.mail.example.org"  # arrived after the last session
C5 = "1690000050.M1P5.mail.example.org"  # listed without a uid (old list)


@pytest.fixture
def courier(tmp_path: Path) -> Path:
    root = maildir(
        tmp_path / "courier" / "Maildir",
        {
            f"cur/{C1}:2,S": M1,
            f"cur/{C2}:2,": M2,
            f"cur/{C3}:2,S": M3,
            f"new/{C4}": M4,
            f"cur/{C5}:2,S": M6,
        },
    )
    (root / "courierpop3dsizelist").write_bytes(
        b"/3 9 1700000000\n"
        + f"{C5}:2,S 44 0:0:0\n".encode()
        + f"{C1}:2,S 45 1:1700000000:0\n".encode()
        + f"{C2}:2, 66 2:1600000000:1\n".encode()
        + f"{C3}:2,S 58 7:0:0\n".encode()
        + b"1690000000.gone:2,S 10 3:1700000000:0\n"  # expunged since
        + b"1690000999.partial 10 8:17"  # no newline: Courier ignores it
    )
    (root / "courierimapuiddb").write_text("1 1700000000 5\n")
    return root


def test_courier_keeps_uidls(courier: Path, target: Path, store: MaildirStore) -> None:
    report = import_courier_maildir(courier, target, locks=store.locks)
    sources = [M6, M1, M2, M3, M4]
    check_report(report, messages=5, kept=4, octets=sum(len(on_the_wire(m)) for m in sources))
    got = listing(store)
    assert [uid for uid, _size in got[:4]] == [C5, "UID1-1700000000", "UID2-1600000000", "UID7"]
    assert NEW_UIDL.fullmatch(got[4][0])
    assert [size for _uid, size in got] == [len(on_the_wire(m)) for m in sources]
    assert contents(store) == sources


def test_courier_version_2_list_and_unreadable_lines(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    root = maildir(tmp_path / "src", {"cur/1690000001.a:2,S": M1, "cur/1690000002.b": M2})
    (root / "courierpop3dsizelist").write_bytes(
        b"/2 3 1700000000\n1690000001.a:2,S 45 1:1700000000\n1690000002.b junk\n"
    )
    report = import_courier_maildir(root, target, locks=store.locks)
    assert report.uidls_kept == 1 and report.uidls_new == 1
    assert report.skipped == ["courierpop3dsizelist line 3: unreadable, ignored"]
    assert listing(store)[0][0] == "UID1-1700000000"


def test_courier_without_sizelist_uses_escaped_file_names(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    long_name = "1690000003." + "L" * 70
    root = maildir(
        tmp_path / "src",
        {
            "cur/1690000002.M1P1.host+x:2,S": M2,
            'cur/1690000001.it\'s "quoted":2,': M1,
            f"new/{long_name}": M3,
        },
    )
    report = import_courier_maildir(root, target, locks=store.locks)
    assert report.uidls_kept == 2 and report.uidls_new == 1
    assert "1690000003." in report.skipped[0] and "not a valid POP3 UIDL" in report.skipped[0]
    got = [uid for uid, _size in listing(store)]
    assert got[:2] == ["1690000001.it+27s+20+22quoted+22", "1690000002.M1P1.host+2Bx"]


@pytest.mark.parametrize("header", [b"/4 9 1700000000\n", b"1 9 1700000000\n", b"/x\n"])
def test_courier_unknown_sizelist_is_refused(
    tmp_path: Path, target: Path, store: MaildirStore, header: bytes
) -> None:
    root = maildir(tmp_path / "src", {"cur/1690000001.a:2,S": M1})
    (root / "courierpop3dsizelist").write_bytes(header + b"1690000001.a:2,S 45 1:1:0\n")
    with pytest.raises(MigrationError, match="courierpop3dsizelist"):
        import_courier_maildir(root, target, locks=store.locks)
    assert not target.exists()


# --- mbox ---------------------------------------------------------------------------

MBOX = (
    b"From alice@example.org Mon Nov 13 22:13:20 2023\n"
    b"Return-Path: <alice@example.org>\n"
    b"X-UIDL: 4d3b2f1a9c8e7d6c5b4a39281706f5e4\n"
    b"Status: RO\n"
    b"Subject: one\n"
    b"\n"
    b">From the start of a line, quoted by the MDA\n"
    b">>From a line that was already quoted\n"
    b"From: not a separator (colon)\n"
    b"\n"
    b"\n"
    b"From bob@example.org Mon Nov 13 22:15:00 2023\r\n"
    b"Subject: two, CRLF, no X-UIDL\r\n"
    b"\r\n"
    b"body\r\n"
    b"\r\n"
    b"From carol@example.org Tue Nov 14 08:00:00 2023\n"
    b"x-uidl:   UID3-1700000000  \n"
    b"Subject: three\n"
    b"\n"
    b"the last message lacks its final newline"
)
MBOX_MESSAGES = [
    b"Return-Path: <alice@example.org>\n"
    b"X-UIDL: 4d3b2f1a9c8e7d6c5b4a39281706f5e4\n"
    b"Status: RO\n"
    b"Subject: one\n"
    b"\n"
    b"From the start of a line, quoted by the MDA\n"
    b">From a line that was already quoted\n"
    b"From: not a separator (colon)\n"
    b"\n",
    b"Subject: two, CRLF, no X-UIDL\r\n\r\nbody\r\n",
    b"x-uidl:   UID3-1700000000  \nSubject: three\n\nthe last message lacks its final newline",
]


def write_mbox(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "mbox"
    path.write_bytes(data)
    return path


def test_mbox_import(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    report = import_mbox(write_mbox(tmp_path, MBOX), target, locks=store.locks)
    check_report(report, messages=3, kept=2, octets=sum(len(on_the_wire(m)) for m in MBOX_MESSAGES))
    got = listing(store)
    assert got[0] == ("4d3b2f1a9c8e7d6c5b4a39281706f5e4", len(on_the_wire(MBOX_MESSAGES[0])))
    assert NEW_UIDL.fullmatch(got[1][0])
    assert got[2] == ("UID3-1700000000", len(on_the_wire(MBOX_MESSAGES[2])))
    assert contents(store) == MBOX_MESSAGES
    names = sorted(os.listdir(target / "cur"))
    assert all(
        re.fullmatch(r"\d+\.M\d+P\d+Q\d+R[0-9a-f]{8}\.[^/:]+,S=\d+,W=\d+:2,", n) for n in names
    )
    assert os.listdir(target / "tmp") == []
    # Names sort in mbox order, so the order survives a lost uid list.
    (target / UIDLIST_NAME).unlink()
    assert contents(store) == MBOX_MESSAGES


def test_mbox_duplicate_invalid_and_pseudo_messages(
    tmp_path: Path, target: Path, store: MaildirStore
) -> None:
    data = (
        b"From MAILER-DAEMON Mon Nov 13 22:13:20 2023\n"
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
        b"X-IMAP: 1700000000 0000000003\n\nThis text is part of the internal format.\n\n"
        b"From a Mon Nov 13 22:13:21 2023\nX-UIDL: same\n\none\n\n"
        b"From b Mon Nov 13 22:13:22 2023\nX-UIDL: same\n\ntwo\n\n"
        b"From c Mon Nov 13 22:13:23 2023\nX-UIDL: has space\n\nthree\n\n"
        b"From d Mon Nov 13 22:13:24 2023\nX-UIDL: \xe9t\xe9\n\nfour\n\n"
        b"From e Mon Nov 13 22:13:25 2023\nSubject: x\n\nX-UIDL: in the body: ignored\n"
    )
    report = import_mbox(write_mbox(tmp_path, data), target, locks=store.locks)
    assert report.messages == 5 and report.uidls_kept == 1
    assert [line.split(":")[0] for line in report.skipped] == [
        "message 1",
        "message 3",
        "message 4",
        "message 5",
    ]
    assert "FOLDER INTERNAL DATA" in report.skipped[0]
    assert not any(b"same" in line.encode() for line in report.skipped)
    got = [uid for uid, _size in listing(store)]
    assert got[0] == "same" and all(NEW_UIDL.fullmatch(uid) for uid in got[1:])


def test_mbox_long_lines_and_empty_files(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    long_line = b"y" * (migrate._CHUNK * 2 + 123)
    message = b"Subject: long\n\n" + long_line + b"\n>From " + long_line + b"\n"
    data = b"From " + b"s" * (migrate._CHUNK + 5) + b"\n" + message + b"\nFrom x\n\nshort\n"
    report = import_mbox(write_mbox(tmp_path, data), target, locks=store.locks)
    assert report.messages == 2
    assert contents(store) == [message.replace(b"\n>From ", b"\nFrom "), b"\nshort\n"]
    empty = import_mbox(
        write_mbox(tmp_path, b""), Path(store.maildir_path("bob", "x")), locks=store.locks
    )
    assert empty.messages == 0


def test_mbox_refusals(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    with pytest.raises(MigrationError, match="not an mbox"):
        import_mbox(
            write_mbox(tmp_path, b"Subject: no separator\n\nbody\n"), target, locks=store.locks
        )
    with pytest.raises(MigrationError, match="cannot read"):
        import_mbox(tmp_path / "missing", target, locks=store.locks)
    with pytest.raises(MigrationError, match="cannot read"):
        import_mbox(tmp_path, target, locks=store.locks)
    assert not target.exists()


def test_mbox_dry_run_and_merge(tmp_path: Path, target: Path, store: MaildirStore) -> None:
    path = write_mbox(tmp_path, MBOX)
    dry = import_mbox(path, target, dry_run=True, locks=store.locks)
    assert not target.exists()
    assert dry == import_mbox(path, target, locks=store.locks)
    with pytest.raises(MigrationError, match="already holds messages"):
        import_mbox(path, target, locks=store.locks)
    again = import_mbox(path, target, merge=True, locks=store.locks)
    # Messages with a kept UIDL are recognised; one without has no identity.
    assert again.messages == 1 and again.uidls_new == 1
    assert sum("already in the target" in line for line in again.skipped) == 2
    assert len(listing(store)) == 4


def mboxrd(messages: Sequence[bytes]) -> bytes:
    out = []
    for message in messages:
        out.append(b"From sender@example.org Mon Nov 13 22:13:20 2023\n")
        out.append(re.sub(rb"(?m)^(>*From )", rb">\1", message))
        out.append(b"\n")
    return b"".join(out)


LINES = st.lists(
    st.sampled_from(
        [b"From x\n", b">From x\n", b">>From \n", b"From:\n", b"\n", b"\r\n", b"a\rb\n", b"text\n"]
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINES.map(b"".join), max_size=5))
def test_mboxrd_round_trip(messages: list[bytes]) -> None:
    """Whatever the messages hold, what an mboxrd writer wrote reads back."""
    reader = migrate._MboxReader(io.BytesIO(mboxrd(messages)), "mbox")
    got = []
    while reader.next_message():
        got.append(b"".join(reader.content()))
    assert got == messages


def test_report_is_frozen() -> None:
    report = ImportReport(source="x", messages=0, octets=0, uidls_kept=0, uidls_new=0, skipped=[])
    with pytest.raises(AttributeError):
        report.messages = 1  # type: ignore[misc]
