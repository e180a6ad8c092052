"""Dovecot passwd-file import: parsing, reporting, dry runs, first logins."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailslot.auth import (
    Account,
    HashParams,
    ImportReport,
    InvalidLine,
    PasswdEntry,
    PasswordHasher,
    UserDB,
    import_passwd_file,
    parse_passwd_file,
)

FAST = HashParams(time_cost=1, memory_kib=8, parallelism=1)
DOMAIN = "example.com"

# Made by ``doveadm pw -s SCHEME -p 'Hello world!'`` and, for the bare
# crypt(3) values, ``openssl passwd -5/-6``.
SHA512_CRYPT = (
    "$6$MWZ7QTmg27E/dC.L$47G2kDFrTmWwCfKe5hY28ZYD0ZoUmTMY4.gs7HmYRbWgMbFmQ0d"
    "/C0oceAjDAjl2Qdx3Ar1DR2p9Vkk8S3bda1"
)
SHA256_CRYPT = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
BLF_CRYPT = "$2y$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G"
SSHA512 = (
    "{SSHA512}GWc16tnk36XZDmXLYdfFPgjO2ou5OXsv15X44ntHp94ba9SAWohhOCpQ5xo62z92mevris7BzndQ"
    "WTs5sgEgLx+4Yo4="
)
HELLO = "Hello world!"

PASSWD_FILE = f"""\
# Dovecot passwd-file, user:password:uid:gid:gecos:home:shell:extra
   # an indented comment

alice@example.com:{{SHA512-CRYPT}}{SHA512_CRYPT}:1000:1000::/home/alice::
bob:{SHA512_CRYPT}
carol@other.org:{SHA256_CRYPT}:::Carol:/home/carol:/bin/false:userdb_quota_rule=*:storage=1G
dave:{BLF_CRYPT}::
erin:{SSHA512}
frank:{{PLAIN}}Hello world!
grace:{{MD5-CRYPT}}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0
heidi:$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0
ivan:*
judy
:{{PLAIN}}x
mallory::1000
../etc:{{PLAIN}}x
ALICE:{{PLAIN}}other
"""
# Line numbers:      1-3 comments/blank, alice 4, bob 5, carol 6, dave 7,
# erin 8, frank 9, grace 10, heidi 11, ivan 12, judy 13, empty user 14,
# mallory 15, ../etc 16, ALICE 17 (a duplicate of alice: the default domain).

EXPECTED_INVALID = (
    InvalidLine(line=10, reason="unsupported password scheme"),
    InvalidLine(line=11, reason="unsupported crypt format without {SCHEME} prefix"),
    InvalidLine(line=12, reason="unsupported crypt format without {SCHEME} prefix"),
    InvalidLine(line=13, reason="no password field"),
    InvalidLine(line=14, reason="empty user name"),
    InvalidLine(line=15, reason="empty password field"),
    InvalidLine(line=16, reason="invalid user name: path separator in user name"),
    InvalidLine(line=17, reason="duplicate of line 4"),
)


DB_PATHS: dict[int, Path] = {}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[UserDB]:
    path = tmp_path / "users.db"
    with UserDB(path, hasher=PasswordHasher(FAST), default_domain=DOMAIN) as users:
        DB_PATHS[id(users)] = path
        yield users
    del DB_PATHS[id(users)]


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_text(PASSWD_FILE, encoding="utf-8")
    return path


def stored(db: UserDB, name: str) -> str:
    # Read the file directly: UserDB never returns a hash.
    with sqlite3.connect(DB_PATHS[id(db)]) as conn:
        row = conn.execute("SELECT password FROM accounts WHERE name = ?", (name,)).fetchone()
    conn.close()
    value: str = row[0]
    return value


def test_parse_passwd_file() -> None:
    entries, invalid = parse_passwd_file(PASSWD_FILE.encode())
    assert entries == [
        PasswdEntry(
            line=4, login="alice@example.com", stored_password="{SHA512-CRYPT}" + SHA512_CRYPT
        ),
        PasswdEntry(line=5, login="bob", stored_password="{SHA512-CRYPT}" + SHA512_CRYPT),
        PasswdEntry(
            line=6, login="carol@other.org", stored_password="{SHA256-CRYPT}" + SHA256_CRYPT
        ),
        PasswdEntry(line=7, login="dave", stored_password="{BLF-CRYPT}" + BLF_CRYPT),
        PasswdEntry(line=8, login="erin", stored_password=SSHA512),
        PasswdEntry(line=9, login="frank", stored_password="{PLAIN}Hello world!"),
        PasswdEntry(line=16, login="../etc", stored_password="{PLAIN}x"),
        PasswdEntry(line=17, login="ALICE", stored_password="{PLAIN}other"),
    ]
    assert invalid == list(EXPECTED_INVALID[:6])


def test_import(db: UserDB, passwd: Path) -> None:
    report = import_passwd_file(db, passwd)
    assert report == ImportReport(
        imported=6, skipped_existing=0, invalid=EXPECTED_INVALID, dry_run=False
    )
    assert [r.account.name for r in db.list()] == [
        "alice@example.com",
        "bob@example.com",
        "carol@other.org",
        "dave@example.com",
        "erin@example.com",
        "frank@example.com",
    ]
    # Hashes are stored as they are, without SCRAM keys (no plaintext known).
    assert stored(db, "bob@example.com") == "{SHA512-CRYPT}" + SHA512_CRYPT
    assert stored(db, "erin@example.com") == SSHA512
    assert all(not r.has_scram and not r.has_secret for r in db.list())


def test_imported_users_log_in_and_are_upgraded(db: UserDB, passwd: Path) -> None:
    import_passwd_file(db, passwd)
    for login in ("alice@example.com", "bob", "carol@other.org", "dave", "erin", "frank"):
        assert db.verify(login, "Hello world") is None
        account = db.verify(login, HELLO)
        assert isinstance(account, Account)
        assert stored(db, account.name).startswith("{ARGON2ID}$argon2id$")
        record = db.get(login)
        assert record is not None and record.has_scram
        assert db.scram(login, "SHA-256") is not None
        assert db.verify(login, HELLO) == account


def test_reasons_never_quote_the_file(db: UserDB, passwd: Path) -> None:
    report = import_passwd_file(db, passwd)
    for item in report.invalid:
        for secretish in ("saltsalt", "$1$", "*", "judy", "mallory", "etc", "other", "ALICE"):
            assert secretish not in item.reason


def test_dry_run_writes_nothing(db: UserDB, passwd: Path) -> None:
    db.add("bob", "already here")
    dry = import_passwd_file(db, passwd, dry_run=True)
    assert dry == ImportReport(
        imported=5, skipped_existing=1, invalid=EXPECTED_INVALID, dry_run=True
    )
    assert [r.account.name for r in db.list()] == ["bob@example.com"]
    real = import_passwd_file(db, passwd)
    assert (real.imported, real.skipped_existing, real.invalid) == (5, 1, EXPECTED_INVALID)
    # Existing accounts are left alone.
    assert db.verify("bob", "already here") is not None


def test_import_twice_skips_everyone(db: UserDB, passwd: Path) -> None:
    import_passwd_file(db, passwd)
    again = import_passwd_file(db, passwd)
    assert (again.imported, again.skipped_existing) == (0, 6)


def test_domain_for_bare_names(db: UserDB, passwd: Path) -> None:
    report = import_passwd_file(db, passwd, domain="Per-Domain.example")
    assert report.imported == 7  # ALICE is no longer alice@example.com's duplicate
    names = {r.account.name for r in db.list()}
    assert "bob@per-domain.example" in names
    assert "alice@example.com" in names  # a name with "@" keeps its domain
    assert "alice@per-domain.example" in names
    assert db.verify("bob@per-domain.example", HELLO) is not None


def test_line_endings_and_encoding(db: UserDB, tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(
        b"crlf:{PLAIN}pw\r\n"
        + b"latin1:{PLAIN}p\xe9\r\n"
        + "josé:{PLAIN}пароль\n".encode()
        + b"last:{PLAIN}no newline"
    )
    report = import_passwd_file(db, path)
    assert report.imported == 3
    assert report.invalid == (InvalidLine(line=2, reason="not UTF-8"),)
    assert db.verify("crlf", "pw") is not None
    assert db.verify("josé", "пароль") is not None
    assert db.verify("last", "no newline") is not None


def test_empty_file(db: UserDB, tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(b"")
    assert import_passwd_file(db, path) == ImportReport(
        imported=0, skipped_existing=0, invalid=(), dry_run=False
    )


def test_missing_file(db: UserDB, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        import_passwd_file(db, tmp_path / "nope")
