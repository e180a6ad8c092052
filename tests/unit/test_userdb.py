"""The SQLite user database, end to end on real files with real argon2."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mailslot import sasl
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


def record(user: str, domain: str = DOMAIN, **changes: Any) -> UserRecord:
    """A fresh account's record, as ``add`` makes it."""
    fields: dict[str, Any] = {
        "account": Account(user=user, domain=domain),
        "created": 1_000_000.0,
        "last_login": None,
        "quota_messages": None,
        "quota_bytes": None,
        "has_secret": False,
        "has_scram": True,
    }
    fields.update(changes)
    return UserRecord(**fields)


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
    john = record("john", DOMAIN, created=1_000_000.0)
    alice = record("alice", "other.org", created=1_000_010.0)
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
    assert columns == {
        "name",
        "user",
        "domain",
        "password",
        "created",
        "last_login",
        "scram_sha1",
        "scram_sha256",
        "secret",
        "quota_messages",
        "quota_bytes",
    }


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


# -- schema 2: SCRAM keys, secrets, quotas -------------------------------------

SHA512_CRYPT_HELLO = (
    "{SHA512-CRYPT}$6$MWZ7QTmg27E/dC.L$47G2kDFrTmWwCfKe5hY28ZYD0ZoUmTMY4.gs7HmYRbWgMbFmQ0d"
    "/C0oceAjDAjl2Qdx3Ar1DR2p9Vkk8S3bda1"
)  # doveadm pw -s SHA512-CRYPT -p 'Hello world!'


def columns(path: Path, name: str, *names: str) -> tuple[Any, ...]:
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            f"SELECT {', '.join(names)} FROM accounts WHERE name = ?", (name,)
        ).fetchone()
    conn.close()
    assert row is not None
    return tuple(row)


def scram_login(db: UserDB, mechanism: str, login: str, password: str) -> sasl.Outcome:
    """A whole SCRAM exchange: a hand client, the sasl flow, the database."""
    digest = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}[mechanism]
    bare = f"n={login},r=clientnonce"
    flow = sasl.start(mechanism, ("n,," + bare).encode(), hostname="h")
    step = next(flow)
    try:
        while True:
            match step:
                case sasl.LookupScram(authcid=authcid, hash_name=hash_name):
                    step = flow.send(db.scram(authcid, hash_name))
                case sasl.Challenge(data=data) if data.startswith(b"r="):
                    attrs = dict(p.split("=", 1) for p in data.decode().split(","))
                    salted = hashlib.pbkdf2_hmac(
                        digest, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
                    )
                    client_key = hmac.new(salted, b"Client Key", digest).digest()
                    stored_key = hashlib.new(digest, client_key).digest()
                    without_proof = f"c=biws,r={attrs['r']}"
                    auth = f"{bare},{data.decode()},{without_proof}".encode()
                    signature = hmac.new(stored_key, auth, digest).digest()
                    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
                    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
                    step = flow.send(final.encode())
                case sasl.Challenge():
                    step = flow.send(b"")
                case _:
                    raise AssertionError(step)
    except StopIteration as stop:
        outcome: sasl.Outcome = stop.value
        return outcome


def test_add_stores_scram_credentials(db: UserDB, path: Path) -> None:
    db.add("john", "pencil")
    for hash_name in ("SHA-1", "SHA-256"):
        credentials = db.scram("john", hash_name)
        assert credentials is not None
        assert credentials.iterations == sasl.DEFAULT_ITERATIONS
        expected = sasl.scram_credentials("pencil", hash_name, salt=credentials.salt)
        assert credentials == expected
    sha256, secret = columns(path, "john@example.com", "scram_sha256", "secret")
    assert sha256.startswith("SCRAM-SHA-256$4096:")
    assert secret is None
    assert db.scram("JOHN@Example.com", "SHA-256") == db.scram("john", "SHA-256")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_login_end_to_end(db: UserDB, mechanism: str) -> None:
    db.add("john", "pencil")
    assert scram_login(db, mechanism, "john", "pencil") == sasl.Success(authcid="john")
    assert scram_login(db, mechanism, "john", "pencil!") == sasl.Failure(
        reason="invalid credentials"
    )
    assert scram_login(db, mechanism, "ghost", "pencil") == sasl.Failure(
        reason="invalid credentials"
    )
    db.set_password("john", "new")
    assert scram_login(db, mechanism, "john", "pencil") == sasl.Failure(
        reason="invalid credentials"
    )
    assert scram_login(db, mechanism, "john", "new") == sasl.Success(authcid="john")


def test_scram_lookup_misses(db: UserDB) -> None:
    db.add("john", "pw")
    assert db.scram("nobody", "SHA-256") is None
    assert db.scram("../etc", "SHA-256") is None
    assert db.scram("", "SHA-1") is None
    with pytest.raises(ValueError):
        db.scram("john", "SHA-512")


def test_malformed_scram_column_is_none(
    db: UserDB, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db.add("john", "pw")
    for bad in (
        "garbage",
        "SCRAM-SHA-1$4096:AA==$AA==:AA==",
        "SCRAM-SHA-256$x:AA==$AA==:AA==",
        "SCRAM-SHA-256$4096:!!$AA==:AA==",
    ):
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE accounts SET scram_sha256 = ?", (bad,))
        conn.close()
        assert db.scram("john", "SHA-256") is None
    assert "malformed scram_sha256" in caplog.text


def test_secret_only_when_asked(db: UserDB) -> None:
    db.add("john", "pw")
    assert db.secret("john") is None
    assert db.get("john") == record("john", has_secret=False)
    db.add("jane", "tanstaaf tanstaaf", store_secret=True)
    assert db.secret("jane") == "tanstaaf tanstaaf"
    assert db.secret("JANE+example.com") == "tanstaaf tanstaaf"
    record_jane = db.get("jane")
    assert record_jane is not None and record_jane.has_secret
    # set_password without store_secret forgets the old secret.
    db.set_password("jane", "new")
    assert db.secret("jane") is None
    db.set_password("jane", "newer", store_secret=True)
    assert db.secret("jane") == "newer"
    assert db.secret("nobody") is None
    assert db.secret("a/b") is None


@pytest.mark.parametrize("password", ["пароль", "bad\udcffoctet", "nul\x00x", "tab\tspace "])
def test_secret_round_trips_any_password(db: UserDB, password: str) -> None:
    db.add("john", password, store_secret=True)
    assert db.secret("john") == password
    assert db.verify("john", password) is not None


def test_cram_md5_end_to_end(db: UserDB) -> None:
    db.add("tim", "tanstaaftanstaaf", store_secret=True)
    db.add("tom", "tanstaaftanstaaf")
    for user, expected in (("tim", True), ("tom", False), ("ghost", False)):
        flow = sasl.start(
            "CRAM-MD5",
            None,
            hostname="postoffice.reston.mci.net",
            nonce=lambda: "1896",
            clock=lambda: 697170952,
        )
        step = next(flow)
        assert step == sasl.Challenge(data=b"<1896.697170952@postoffice.reston.mci.net>")
        digest = hmac.new(b"tanstaaftanstaaf", step.data, "md5").hexdigest()
        step = flow.send(f"{user} {digest}".encode())
        assert isinstance(step, sasl.LookupSecret)
        with pytest.raises(StopIteration) as stop:
            flow.send(db.secret(step.authcid))
        assert isinstance(stop.value.value, sasl.Success) is expected


def test_quota(db: UserDB) -> None:
    db.add("john", "pw")
    assert db.get("john") == record("john")
    db.set_quota("john", messages=100, bytes_=10_000_000)
    assert db.get("john") == record("john", quota_messages=100, quota_bytes=10_000_000)
    db.set_quota("JOHN", messages=None, bytes_=0)
    assert db.get("john") == record("john", quota_messages=None, quota_bytes=0)
    db.set_quota("john", messages=None, bytes_=None)
    assert db.get("john") == record("john")
    assert db.list() == [record("john")]


def test_quota_errors(db: UserDB) -> None:
    db.add("john", "pw")
    with pytest.raises(NoSuchUser):
        db.set_quota("nobody", messages=1, bytes_=1)
    with pytest.raises(InvalidName):
        db.set_quota("../x", messages=1, bytes_=1)
    for messages, bytes_ in ((-1, None), (None, -1), (True, None)):
        with pytest.raises(ValueError):
            db.set_quota("john", messages=messages, bytes_=bytes_)
    assert db.get("john") == record("john")


def test_add_hashed_then_first_login_upgrades(db: UserDB, path: Path) -> None:
    db.add_hashed("john", SHA512_CRYPT_HELLO)
    assert db.get("john") == record("john", has_scram=False)
    assert db.scram("john", "SHA-256") is None
    assert db.verify("john", "Hello world") is None
    assert stored_password(path, "john@example.com") == SHA512_CRYPT_HELLO  # no change on failure
    assert db.verify("john", "Hello world!") == Account(user="john", domain=DOMAIN)
    assert stored_password(path, "john@example.com").startswith("{ARGON2ID}$argon2id$")
    assert db.get("john") == record("john", has_scram=True)
    assert scram_login(db, "SCRAM-SHA-256", "john", "Hello world!") == sasl.Success(authcid="john")
    assert db.verify("john", "Hello world!") is not None


def test_add_hashed_errors(db: UserDB) -> None:
    db.add("john", "pw")
    with pytest.raises(UserExists):
        db.add_hashed("john", SHA512_CRYPT_HELLO)
    for bad in ("{MD5-CRYPT}$1$x$y", "$6$no-prefix", "{CRYPT}$1$x$y", ""):
        with pytest.raises(ValueError):
            db.add_hashed("jane", bad)
    with pytest.raises(InvalidName):
        db.add_hashed("a b", SHA512_CRYPT_HELLO)
    assert db.get("jane") is None


def test_current_hash_without_scram_gets_scram_at_login(path: Path, hasher: CountingHasher) -> None:
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        current = hasher.hash("pw")
        userdb.add_hashed("john", current)
        assert userdb.verify("john", "wrong") is None
        assert columns(path, "john@example.com", "scram_sha1", "scram_sha256") == (None, None)
        assert userdb.verify("john", "pw") is not None
        # The hash is current: kept as it is; only the SCRAM keys are added.
        assert stored_password(path, "john@example.com") == current
        sha1, sha256 = columns(path, "john@example.com", "scram_sha1", "scram_sha256")
        assert sha1.startswith("SCRAM-SHA-1$") and sha256.startswith("SCRAM-SHA-256$")
        # And not again at the next login.
        assert userdb.verify("john", "pw") is not None
        assert columns(path, "john@example.com", "scram_sha1", "scram_sha256") == (sha1, sha256)


def test_rehash_off_never_writes(path: Path, hasher: CountingHasher) -> None:
    with UserDB(path, hasher=hasher, default_domain=DOMAIN, rehash=False) as userdb:
        userdb.add_hashed("bench", "{PLAIN}pw")
        userdb.add_hashed("john", SHA512_CRYPT_HELLO)
        hashes = hasher.hashes
        for _ in range(3):
            assert userdb.verify("bench", "pw") is not None
            assert userdb.verify("john", "Hello world!") is not None
        assert stored_password(path, "bench@example.com") == "{PLAIN}pw"
        assert stored_password(path, "john@example.com") == SHA512_CRYPT_HELLO
        assert userdb.scram("bench", "SHA-1") is None
        assert hasher.hashes == hashes
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        assert userdb.verify("bench", "pw") is not None
        assert stored_password(path, "bench@example.com").startswith("{ARGON2ID}")


def test_rehash_replaces_scram_keys_too(path: Path) -> None:
    with UserDB(path, hasher=PasswordHasher(FAST), default_domain=DOMAIN) as old:
        old.add("john", "pw")
    before = columns(path, "john@example.com", "scram_sha256")
    stronger = HashParams(time_cost=2, memory_kib=8, parallelism=1)
    with UserDB(path, hasher=PasswordHasher(stronger), default_domain=DOMAIN) as new:
        assert new.verify("john", "pw") is not None
        after = columns(path, "john@example.com", "scram_sha256")
        assert after != before  # a fresh salt
        assert scram_login(new, "SCRAM-SHA-256", "john", "pw") == sasl.Success(authcid="john")


def test_default_domain_property(db: UserDB) -> None:
    assert db.default_domain == DOMAIN


V1_SCHEMA = """
CREATE TABLE accounts (
    name       TEXT PRIMARY KEY NOT NULL,
    user       TEXT NOT NULL,
    domain     TEXT NOT NULL,
    password   TEXT NOT NULL,
    created    REAL NOT NULL,
    last_login REAL,
    CHECK (name = user || '@' || domain)
)
"""


def test_migration_from_schema_1(path: Path, hasher: CountingHasher) -> None:
    # A database as the first release wrote it.
    conn = sqlite3.connect(path)
    conn.execute(V1_SCHEMA)
    conn.execute(
        "INSERT INTO accounts VALUES ('john@example.com', 'john', 'example.com', ?, 5.0, 7.0)",
        (hasher.hash("pw"),),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        assert userdb.get("john") == record("john", created=5.0, last_login=7.0, has_scram=False)
        assert userdb.verify("john", "pw") is not None
        assert userdb.scram("john", "SHA-256") is not None
        userdb.set_quota("john", messages=3, bytes_=None)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    # Opening again migrates nothing and loses nothing.
    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        assert userdb.get("john") == record(
            "john", created=5.0, last_login=7.0, quota_messages=3, has_scram=True
        )


def test_quota_check_constraint(db: UserDB, path: Path) -> None:
    db.add("john", "pw")
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE accounts SET quota_bytes = -1")
    conn.close()


def test_failed_scram_fill_is_not_a_failed_login(
    path: Path, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(password: str, hash_name: str) -> sasl.ScramCredentials:
        raise RuntimeError("no entropy today")

    with UserDB(path, hasher=hasher, default_domain=DOMAIN) as userdb:
        userdb.add_hashed("john", hasher.hash("pw"))
        monkeypatch.setattr("mailslot.auth.userdb.scram_credentials", broken)
        assert userdb.verify("john", "pw") == Account(user="john", domain=DOMAIN)
        assert userdb.scram("john", "SHA-1") is None
