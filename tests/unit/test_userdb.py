"""The SQLite user database, end to end on real files with real argon2."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailslot.auth import (
    SCHEMA_VERSION,
    Account,
    HashParams,
    InvalidName,
    NoSuchUser,
    PasswordHasher,
    UserDB,
    UserDBError,
    UserExists,
    UserRecord,
)

FAST = HashParams(time_cost=1, memory_kib=8, parallelism=1)
DOMAIN = "example.com"


class CountingHasher(PasswordHasher):
    """Counts the work done, to check unknown users cost a verify too."""

    __slots__ = ("dummies", "hashes", "verifies")

    def __init__(self, params: HashParams = FAST) -> None:
        super().__init__(params)
        self.dummies = 0
        self.verifies = 0
        self.hashes = 0

    def hash(self, password: str) -> str:
        self.hashes += 1
        return super().hash(password)

    def verify(self, stored: str, password: str) -> bool:
        self.verifies += 1
        return super().verify(stored, password)

    def verify_dummy(self, password: str) -> None:
        self.dummies += 1
        super().verify_dummy(password)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "users.db"


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(path: Path, hasher: CountingHasher, clock: FakeClock) -> Iterator[UserDB]:
    with UserDB(path, hasher=hasher, default_domain=DOMAIN, clock=clock) as userdb:
        yield userdb


def stored_password(path: Path, name: str) -> str:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT password FROM accounts WHERE name = ?", (name,)).fetchone()
    conn.close()
    value: str = row[0]
    return value


def test_add_get_list(db: UserDB, clock: FakeClock) -> None:
    assert db.list() == []
    assert db.add("john", "pw1") == Account(user="john", domain=DOMAIN)
    clock.now += 10
    assert db.add("Alice@Other.ORG", "pw2") == Account(user="alice", domain="other.org")
    john = UserRecord(
        account=Account(user="john", domain=DOMAIN), created=1_000_000.0, last_login=None
    )
    alice = UserRecord(
        account=Account(user="alice", domain="other.org"), created=1_000_010.0, last_login=None
    )
    assert db.get("john") == john
    assert db.get("JOHN@example.com") == john
    assert db.get("john+Example.com") == john
    assert db.get("nobody") is None
    assert db.list() == [alice, john]  # sorted by name


def test_verify_end_to_end(db: UserDB) -> None:
    john = db.add("john@host", "s3cret pass")
    assert db.verify("john@host", "s3cret pass") == john
    assert db.verify("john+host", "s3cret pass") == john
    assert db.verify("JOHN+Host", "s3cret pass") == john
    assert db.verify("john@host", "s3cret  pass") is None
    assert db.verify("john@host", "") is None
    assert db.verify("john", "s3cret pass") is None  # john@example.com does not exist


def test_set_password(db: UserDB) -> None:
    db.add("john", "old")
    db.set_password("JOHN@example.com", "new\tone")
    assert db.verify("john", "old") is None
    assert db.verify("john", "new\tone") == Account(user="john", domain=DOMAIN)


def test_delete(db: UserDB) -> None:
    db.add("john", "pw")
    db.add("jane", "pw")
    db.delete("john+example.com")
    assert db.get("john") is None
    assert db.verify("john", "pw") is None
    assert [r.account.user for r in db.list()] == ["jane"]


def test_duplicate_add(db: UserDB) -> None:
    db.add("john@host", "pw")
    with pytest.raises(UserExists):
        db.add("JOHN+host", "other")
    assert db.verify("john@host", "pw") is not None


def test_unknown_user_admin_errors(db: UserDB) -> None:
    with pytest.raises(NoSuchUser):
        db.delete("nobody")
    with pytest.raises(NoSuchUser):
        db.set_password("nobody", "pw")


def test_admin_methods_report_invalid_names(db: UserDB) -> None:
    for call in (
        lambda: db.add("../x", "pw"),
        lambda: db.get("a b"),
        lambda: db.delete("."),
        lambda: db.set_password("a/b", "pw"),
    ):
        with pytest.raises(InvalidName):
            call()


def test_unknown_user_costs_a_dummy_verify(db: UserDB, hasher: CountingHasher) -> None:
    db.add("john", "pw")
    assert db.verify("nobody", "pw") is None
    assert hasher.dummies == 1
    # An invalid name is answered exactly like an unknown user.
    assert db.verify("../../etc/passwd", "pw") is None
    assert db.verify("jo\r\nhn", "pw") is None
    assert db.verify("", "pw") is None
    assert hasher.dummies == 4
    # A known user with a wrong password: a real verify, no dummy.
    before = hasher.verifies
    assert db.verify("john", "wrong") is None
    assert hasher.dummies == 4
    assert hasher.verifies == before + 1


def test_record_login(db: UserDB) -> None:
    john = db.add("john", "pw")
    db.record_login(john, 1234.5)
    record = db.get("john")
    assert record is not None
    assert record.last_login == 1234.5
    # A vanished account is not an error: the login already happened.
    db.delete("john")
    db.record_login(john, 1300.0)


def test_file_mode_is_private(path: Path, hasher: CountingHasher) -> None:
    old_umask = os.umask(0o022)
    try:
        with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
            userdb.add("john", "pw")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if sidecar.exists():
            assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0


def test_existing_file_mode_is_left_alone(path: Path, hasher: CountingHasher) -> None:
    path.touch()
    path.chmod(0o640)
    UserDB(path, hasher=hasher, default_domain=DOMAIN).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_reopen_sees_users(path: Path, hasher: CountingHasher) -> None:
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as first:
        john = first.add("john", "pw")
    with UserDB(path, hasher=CountingHasher(), default_domain=DOMAIN) as second:
        assert second.verify("john@example.com", "pw") == john
        assert [r.account for r in second.list()] == [john]


def test_two_open_handles_share_the_file(path: Path, hasher: CountingHasher) -> None:
    # The server and the CLI, each with its own handle on the file.
    with (
        UserDB(path, hasher=hasher, default_domain=DOMAIN) as server,
        UserDB(path, hasher=hasher, default_domain=DOMAIN) as cli,
    ):
        cli.add("john", "pw")
        assert server.verify("john", "pw") is not None
        cli.set_password("john", "new")
        assert server.verify("john", "pw") is None
        assert server.verify("john", "new") is not None


def test_schema_version_and_wal(path: Path, db: UserDB) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    conn.close()
    assert columns == {"name", "user", "domain", "password", "created", "last_login"}


def test_newer_schema_is_refused(path: Path, hasher: CountingHasher) -> None:
    UserDB(path, hasher=hasher, default_domain=DOMAIN).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(UserDBError, match="newer"):
        UserDB(path, hasher=hasher, default_domain=DOMAIN)


def test_invalid_default_domain(path: Path, hasher: CountingHasher) -> None:
    with pytest.raises(ValueError):
        UserDB(path, hasher=hasher, default_domain="../etc")


def test_closed_db_refuses_use(path: Path, hasher: CountingHasher) -> None:
    userdb = UserDB(path, hasher=hasher, default_domain=DOMAIN)
    userdb.close()
    userdb.close()  # idempotent
    with pytest.raises(UserDBError):
        userdb.list()


def test_rehash_on_login_when_params_change(path: Path) -> None:
    with UserDB(path, hasher=PasswordHasher(FAST), default_domain=DOMAIN) as old:
        old.add("john", "pw")
    before = stored_password(path, "john@example.com")
    stronger = HashParams(time_cost=2, memory_kib=16, parallelism=1)
    with UserDB(path, hasher=PasswordHasher(stronger), default_domain=DOMAIN) as new:
        assert new.verify("john", "wrong") is None
        assert stored_password(path, "john@example.com") == before  # no rehash on failure
        assert new.verify("john", "pw") is not None
        after = stored_password(path, "john@example.com")
        assert after != before
        assert "$m=16,t=2,p=1$" in after
        assert new.verify("john", "pw") is not None


def test_plain_password_is_upgraded_on_login(path: Path, hasher: CountingHasher) -> None:
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        userdb.add("john", "placeholder")
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE accounts SET password = '{PLAIN}pw'")
        conn.close()
        assert userdb.verify("john", "pw") is not None
        assert stored_password(path, "john@example.com").startswith("{ARGON2ID}$argon2id$")
        assert userdb.verify("john", "pw") is not None


def test_failed_rehash_is_not_a_failed_login(path: Path) -> None:
    class BrokenHash(PasswordHasher):
        __slots__ = ()

        def hash(self, password: str) -> str:
            raise RuntimeError("disk on fire")

    with UserDB(path, hasher=PasswordHasher(FAST), default_domain=DOMAIN) as userdb:
        userdb.add("john", "pw")
    stronger = HashParams(time_cost=2, memory_kib=8, parallelism=1)
    with UserDB(path, hasher=BrokenHash(stronger), default_domain=DOMAIN) as userdb:
        assert userdb.verify("john", "pw") == Account(user="john", domain=DOMAIN)


def test_concurrent_verify_from_8_threads(db: UserDB, hasher: CountingHasher) -> None:
    users = [f"user{i}" for i in range(8)]
    for user in users:
        db.add(user, f"pw-{user}")
    barrier = threading.Barrier(8)

    def login(i: int) -> list[bool]:
        barrier.wait()
        user = users[i]
        results = []
        for _ in range(5):
            results.append(db.verify(user, f"pw-{user}") == Account(user=user, domain=DOMAIN))
            results.append(db.verify(user, "wrong") is None)
            results.append(db.verify(f"ghost{i}", "pw") is None)
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(login, range(8)))
    assert all(all(results) for results in outcomes)
    assert len(outcomes) == 8


def test_concurrent_verify_with_a_writer(db: UserDB, path: Path) -> None:
    db.add("john", "pw")
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        with UserDB(path, hasher=PasswordHasher(FAST), default_domain=DOMAIN) as cli:
            i = 0
            while not stop.is_set():
                try:
                    cli.add(f"new{i}", "pw")
                    cli.record_login(Account(user=f"new{i}", domain=DOMAIN), float(i))
                except BaseException as exc:
                    errors.append(exc)
                    return
                i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            ok = list(pool.map(lambda _: db.verify("john", "pw") is not None, range(64)))
    finally:
        stop.set()
        writer.join()
    assert all(ok)
    assert errors == []
