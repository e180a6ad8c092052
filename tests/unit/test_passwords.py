"""Password hashing: round trips, hostile stored values, schemes, rehash."""

from __future__ import annotations

import base64
import hashlib

import argon2
import bcrypt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot.auth import SCHEMES, HashParams, PasswordHasher, is_verifiable, scheme_of

# Cheap argon2 for speed; one test below uses the defaults.
FAST = HashParams(time_cost=1, memory_kib=8, parallelism=1)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(FAST)


def test_hash_is_dovecot_style_argon2id(hasher: PasswordHasher) -> None:
    stored = hasher.hash("secret")
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$")


def test_round_trip(hasher: PasswordHasher) -> None:
    stored = hasher.hash("secret")
    assert hasher.verify(stored, "secret")
    assert not hasher.verify(stored, "Secret")
    assert not hasher.verify(stored, "secret ")
    assert not hasher.verify(stored, "")


def test_salted(hasher: PasswordHasher) -> None:
    assert hasher.hash("secret") != hasher.hash("secret")


def test_round_trip_with_default_params() -> None:
    hasher = PasswordHasher()
    assert hasher.params == HashParams(time_cost=3, memory_kib=65536, parallelism=1)
    stored = hasher.hash("correct horse")
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert hasher.verify(stored, "correct horse")
    assert not hasher.verify(stored, "wrong horse")
    assert not hasher.needs_rehash(stored)


@pytest.mark.parametrize("lanes", [1, 2])
def test_argon2_cffi_and_libsodium_read_each_other(hasher: PasswordHasher, lanes: int) -> None:
    """Ours (libsodium, one lane) checks out with argon2-cffi; argon2-cffi's,
    with one lane (libsodium's path) or two (argon2-cffi's), check out here."""
    ours = hasher.hash("secret").removeprefix("{ARGON2ID}")
    assert argon2.PasswordHasher().verify(ours, "secret")
    theirs = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=lanes).hash("pw")
    assert hasher.verify("{ARGON2ID}" + theirs, "pw")
    assert not hasher.verify("{ARGON2ID}" + theirs, "pW")


@pytest.mark.parametrize(
    "password",
    [
        "",
        "with spaces  inside ",
        " leading",
        "tab\there",
        "cr\rhere",
        "lf\nhere",
        "nul\x00here",
        "пароль",
        "密码🔑",
        "e\u0301",  # not normalised: the octets are the password
        "x" * 1000,
        "bad\udcffoctet",  # surrogateescape'd non-UTF-8 octet
    ],
)
def test_arbitrary_passwords_round_trip(hasher: PasswordHasher, password: str) -> None:
    stored = hasher.hash(password)
    assert hasher.verify(stored, password)
    assert not hasher.verify(stored, password + "x")


def test_passwords_are_not_normalised(hasher: PasswordHasher) -> None:
    assert not hasher.verify(hasher.hash("e\u0301"), "\u00e9")
    assert not hasher.verify(hasher.hash("tab\t"), "tab ")


def test_unencodable_password(hasher: PasswordHasher) -> None:
    stored = hasher.hash("secret")
    assert not hasher.verify(stored, "\ud800")
    with pytest.raises(ValueError):
        hasher.hash("\ud800")


def _argon2_body(hasher: PasswordHasher, password: str) -> str:
    return hasher.hash(password).removeprefix("{ARGON2ID}")


MALFORMED = [
    "",
    "{",
    "}",
    "{}",
    "{}secret",
    "{ARGON2ID}",
    "{ARGON2ID}garbage",
    "{ARGON2ID}$argon2id$",
    "{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$zz$zz",
    "{ARGON2ID}$argon2id$v=19$m=99999999999,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "{ARGON2ID}$argon2d$v=19$m=8,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "{NOPE}x",
    "{NOPE}secret",
    "{" + "A" * 100 + "}secret",
    "secret",  # no braces: no guessing a default scheme
    "$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "ARGON2ID}secret",
    "{PLAIN",
    "\x00\x00",
    "{PLAIN}\ud800",
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_malformed_stored_values_are_false_not_errors(hasher: PasswordHasher, stored: str) -> None:
    assert hasher.verify(stored, "secret") is False
    assert hasher.needs_rehash(stored) is True


def test_unprefixed_real_hash_is_refused(hasher: PasswordHasher) -> None:
    assert not hasher.verify(_argon2_body(hasher, "secret"), "secret")


def test_prefix_must_match_argon2_variant(hasher: PasswordHasher) -> None:
    body = _argon2_body(hasher, "secret")
    assert not hasher.verify("{ARGON2I}" + body, "secret")


def test_argon2i_is_accepted() -> None:
    legacy = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=argon2.Type.I)
    stored = "{ARGON2I}" + legacy.hash("secret")
    hasher = PasswordHasher(FAST)
    assert hasher.verify(stored, "secret")
    assert not hasher.verify(stored, "wrong")
    assert hasher.needs_rehash(stored)


def test_scheme_names_are_case_insensitive(hasher: PasswordHasher) -> None:
    body = _argon2_body(hasher, "secret")
    assert hasher.verify("{argon2id}" + body, "secret")
    assert hasher.verify("{plain}secret", "secret")


def test_plain_scheme(hasher: PasswordHasher) -> None:
    assert hasher.verify("{PLAIN}secret", "secret")
    assert not hasher.verify("{PLAIN}secret", "secreT")
    assert not hasher.verify("{PLAIN}secret", "secret2")
    assert not hasher.verify("{PLAIN}secret", "")
    assert hasher.verify("{PLAIN}", "")
    assert hasher.verify("{PLAIN}a }{ b\t", "a }{ b\t")
    assert hasher.verify("{PLAIN}пароль", "пароль")
    # A cheap scheme is upgraded at the next successful login.
    assert hasher.needs_rehash("{PLAIN}secret")


def test_schemes() -> None:
    assert {
        "ARGON2ID",
        "ARGON2I",
        "PLAIN",
        "CLEAR",
        "CLEARTEXT",
        "BLF-CRYPT",
        "BCRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "CRYPT",
        "SSHA512",
        "SSHA256",
        "SSHA",
        "SHA512",
        "SHA256",
        "SHA",
        "SHA1",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
    } == SCHEMES


def test_needs_rehash_when_params_change() -> None:
    old = PasswordHasher(FAST)
    stored = old.hash("secret")
    assert not old.needs_rehash(stored)
    for params in (
        HashParams(time_cost=2, memory_kib=8, parallelism=1),
        HashParams(time_cost=1, memory_kib=16, parallelism=1),
        HashParams(time_cost=1, memory_kib=16, parallelism=2),
    ):
        new = PasswordHasher(params)
        assert new.needs_rehash(stored)
        # Old hashes still verify: the parameters live in the stored value.
        assert new.verify(stored, "secret")
        assert not new.needs_rehash(new.hash("secret"))


def test_verify_dummy_does_not_raise(hasher: PasswordHasher) -> None:
    hasher.verify_dummy("anything")
    hasher.verify_dummy("")
    hasher.verify_dummy("\ud800")
    hasher.verify_dummy("tab\tcr\rnul\x00")


def test_verify_dummy_uses_one_dummy_with_the_same_params() -> None:
    calls: list[str] = []

    class Recording(PasswordHasher):
        __slots__ = ()

        def verify(self, stored: str, password: str) -> bool:
            calls.append(stored)
            return super().verify(stored, password)

    hasher = Recording(FAST)
    hasher.verify_dummy("a")
    hasher.verify_dummy("b")
    assert len(calls) == 2
    assert calls[0] == calls[1]
    assert calls[0].startswith("{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$")
    assert not hasher.needs_rehash(calls[0])


@pytest.mark.parametrize(
    "kwargs",
    [{"time_cost": 0}, {"parallelism": 0}, {"memory_kib": 7}, {"memory_kib": 8, "parallelism": 2}],
)
def test_hash_params_validate_themselves(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HashParams(**kwargs)


@settings(max_examples=200, deadline=None)
@given(stored=st.text(max_size=200), password=st.text(max_size=50))
def test_verify_never_raises(stored: str, password: str) -> None:
    hasher = PasswordHasher(FAST)
    assert hasher.verify(stored, password) in (True, False)
    assert hasher.verify("{ARGON2ID}" + stored, password) is False
    hasher.needs_rehash(stored)


# -- Dovecot schemes ---------------------------------------------------------
#
# Each value below was made by a reference implementation, never by the code
# under test: ``doveadm pw -s SCHEME -p PASSWORD`` (Dovecot 2.3), and
# ``openssl passwd -5/-6 -salt ...`` / glibc crypt(3) for the SHA-crypt
# examples of Drepper's specification.

HELLO = "Hello world!"

DOVECOT_VECTORS: list[tuple[str, str]] = [
    ("{BLF-CRYPT}$2y$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G", HELLO),
    ("{BLF-CRYPT}$2y$04$bQQr3W28OhroXAj7K35b1uYXP2ihJjyiInSZPS7a7ACNqwAYhn0pG", "пароль"),
    ("{CRYPT}$2y$05$W4.5LsbmvATBJ0R5VH5LBOR1UIKHchC8HykxSkJ97CPkl8tqHIdLq", HELLO),
    (
        "{SHA512-CRYPT}$6$MWZ7QTmg27E/dC.L$47G2kDFrTmWwCfKe5hY28ZYD0ZoUmTMY4.gs7HmYRbWgMbFmQ0d"
        "/C0oceAjDAjl2Qdx3Ar1DR2p9Vkk8S3bda1",
        HELLO,
    ),
    (
        "{SHA512-CRYPT}$6$Edpcs4smTNI5DJXx$IuK/qLSv6ZK0k.lo6UA7p0O9fdeVnNrIvSH.0N3/DQD0Ef1Zzvgs"
        "S2gdFXHrVtQWiqRUSYBHUe4MctpTBKk6T.",
        "пароль",
    ),
    (
        "{SHA512-CRYPT}$6$rounds=10000$UB/mA8ggJZ1W6fGk$CyFMS0rIpDYZ7RQPQMoCSmB/TSuNe5fnl4iaknif"
        "FKmntPuUCu9GUp1J5MQrPDu56XhTmUhIlLgPG8NgkD6J4/",
        HELLO,
    ),
    ("{SHA256-CRYPT}$5$EpnY0psBwmauFBzA$SYNCJLh3NF2ldfIMTTJ9p.zT6QM1F7m7FZUra3l4q0/", HELLO),
    (
        "{SHA256-CRYPT}$5$rounds=1000$x9AQxs7og9scZKgS$qCpPKX6EZndRyR.F3EtCrdLVWyKslIfviV/3XtSnLk3",
        HELLO,
    ),
    (
        "{SSHA512}GWc16tnk36XZDmXLYdfFPgjO2ou5OXsv15X44ntHp94ba9SAWohhOCpQ5xo62z92mevris7BzndQ"
        "WTs5sgEgLx+4Yo4=",
        HELLO,
    ),
    (
        "{SSHA512}DnxzfQTzmBLIrMmu10bVdgGvasQOSNwjg7nT3McZgSP94wn1iqXrX9Rbn9y5FKZvzzOZLQF/iLiIBq0"
        "JN+MUyQinjHU=",
        "",
    ),
    ("{SSHA256}W+pa1U/7+pUvO+wMAgOtsvZj+YpUKZY9aqa0elubs6qOzRRw", HELLO),
    ("{SSHA}HUNFSnYPdIrzwHCcakXalnFQafRUSfI+", HELLO),
    (
        "{SHA512}9s3ioPgZMUzd5V/CJ9jX2uPSjMVWIioKitZtkcytSq1glPUXohgjYMmqz2o9wyMWLLb9jN/+2w/gOPV"
        "ehf+1tg==",
        HELLO,
    ),
    ("{SHA256}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5Ro=", HELLO),
    ("{SHA}00hq6RNueFa8QiEjhep5cJRHWAI=", HELLO),
    ("{SHA1}00hq6RNueFa8QiEjhep5cJRHWAI=", HELLO),
    ("{SHA256.HEX}c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51a", HELLO),
    # doveadm pw -t accepts the hex form under the plain scheme name too.
    ("{SHA256}c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51a", HELLO),
    (
        "{SHA512.HEX}f6cde2a0f819314cdde55fc227d8d7dae3d28cc556222a0a8ad66d91ccad4aad6094f517a218"
        "2360c9aacf6a3dc323162cb6fd8cdffedb0fe038f55e85ffb5b6",
        HELLO,
    ),
    (
        "{SSHA256.HEX}2b522cea37375645413694b1eed4f9ce18d92c77a400158bf17652bf9f61aef155fa37fb",
        HELLO,
    ),
    (
        "{SCRAM-SHA-256}4096,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,"
        "RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=",
        "pencil",
    ),
    (
        "{SCRAM-SHA-1}4096,Rt0BHiVgCu9eErV0w8v1eg==,mQUcEaa8JoA9+ngL81u0UkqJ5bo=,"
        "i7BQ1zuxtNSFZCg3hyAP0zmU+U4=",
        "pencil",
    ),
    ("{CLEAR}Hello world!", HELLO),
    ("{CLEARTEXT}Hello world!", HELLO),
]

# SHA-crypt: the examples of Drepper's specification, made with
# ``openssl passwd -5 -salt saltstring 'Hello world!'`` (and -6, and with a
# "rounds=10000$" salt) and with glibc crypt(3) for the others.
SHA_CRYPT_VECTORS: list[tuple[str, str]] = [
    ("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", HELLO),
    (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCo"
        "EOfaS35inz1",
        HELLO,
    ),
    ("$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA", HELLO),
    (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8"
        "vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
        HELLO,
    ),
    ("$5$rounds=5000$toolongsaltstrin$0vuwUia3Nx9V/DqToMS8YLcfXpEXmSaC8wgguLIbus2", HELLO),
    (
        "$6$rounds=1400$anotherlongsalts$5FGyu8c4BZDX4wJgs0Un26YOw2XibT5eTkHF1I1aP3QqStoJI9BHD2YP"
        "JYsAjEePVGUyBjdZxcNqMWlrrbIOC.",
        HELLO,
    ),
    (
        "$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/",
        "we have a short salt string but not a short password",
    ),
    (
        "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66"
        "x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1",
        "a very much longer text to encrypt.  This one even stretches over morethan one line.",
    ),
    ("$5$$mAwMsDaqjtxAtGqstEIf7OBR15rgcx.jSKGM94IKRj/", HELLO),
    (
        "$6$short$5LDNaXtCEHSCdHwfOGbSZlgt54YFW6U0FaxKkvo/rhpm86r2NwXmd8IEQYNV2IJSS.IH8jaJUBAk3K5x"
        "RDBXw.",
        HELLO,
    ),
    (
        "$6$abc$mJP3a6FyA8uCnzRtlnNypPwjnvpi5TP9qOrInzrfDmwxUQG38PkpCPdqfTb8JQfAngapMxeim4AZ..hSdR"
        "RzD.",
        "",
    ),
    (
        "$6$rounds=5000$utf8salt$2D/7PUM9775jIPV0.pU0LUgsQ8ZD8TarI1Jyxzt.1FCj/9BbwzAyRk5NXrdOVlDp"
        "DRukGylnC/A6b2wEOEkyC0",
        "пароль с пробелом",
    ),
]


def sha_crypt_scheme(value: str) -> str:
    return "{SHA256-CRYPT}" if value.startswith("$5$") else "{SHA512-CRYPT}"


@pytest.mark.parametrize(("stored", "password"), DOVECOT_VECTORS)
def test_dovecot_vectors(hasher: PasswordHasher, stored: str, password: str) -> None:
    assert hasher.verify(stored, password)
    assert not hasher.verify(stored, password + "x")
    assert not hasher.verify(stored, password.upper() + "!")
    assert hasher.needs_rehash(stored)
    assert is_verifiable(stored)


@pytest.mark.parametrize(("value", "password"), SHA_CRYPT_VECTORS)
def test_sha_crypt_vectors(hasher: PasswordHasher, value: str, password: str) -> None:
    for stored in (sha_crypt_scheme(value) + value, "{CRYPT}" + value):
        assert hasher.verify(stored, password)
        assert not hasher.verify(stored, password + " ")
        if password:
            assert not hasher.verify(stored, password[:-1])
        assert hasher.needs_rehash(stored)
    other = "{SHA512-CRYPT}" if value.startswith("$5$") else "{SHA256-CRYPT}"
    assert not hasher.verify(other + value, password)


SHA256_HELLO = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"


@pytest.mark.parametrize(
    "value",
    [
        "$5$rounds=999$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",  # below 1000
        "$5$rounds=1000000000$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "$5$rounds=05000$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "$5$rounds=$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "$5$saltstringsaltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",  # salt > 16
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc",  # short
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc55",  # long
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc_",  # not crypt64
        "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc6",  # one bit off
        "$5$saltstring",
        "$5$",
        "$5",
        "saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "$5$salt$string$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
        "$5$\udcffsalt$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5",
    ],
)
def test_sha_crypt_malformed(hasher: PasswordHasher, value: str) -> None:
    assert not hasher.verify("{SHA256-CRYPT}" + value, HELLO)
    assert not hasher.verify("{CRYPT}" + value, HELLO)


def test_crypt_schemes_refuse_nul_in_password(hasher: PasswordHasher) -> None:
    # crypt(3) stops at NUL: "Hello world!\0x" was never hashed as such.
    assert not hasher.verify("{SHA256-CRYPT}" + SHA256_HELLO, HELLO + "\x00x")
    bcrypt_hello = DOVECOT_VECTORS[0][0]
    assert not hasher.verify(bcrypt_hello, HELLO + "\x00x")


@pytest.mark.parametrize("ident", ["2a", "2b", "2y"])
def test_bcrypt_variants(hasher: PasswordHasher, ident: str) -> None:
    value = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    value = f"${ident}$" + value[4:]
    for scheme in ("{BLF-CRYPT}", "{BCRYPT}", "{CRYPT}", "{blf-crypt}"):
        assert hasher.verify(scheme + value, "secret")
        assert not hasher.verify(scheme + value, "Secret")


def test_bcrypt_reads_72_octets_like_crypt(hasher: PasswordHasher) -> None:
    value = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(rounds=4)).decode()
    assert hasher.verify("{BLF-CRYPT}" + value, "x" * 72)
    assert hasher.verify("{BLF-CRYPT}" + value, "x" * 72 + "ignored")
    assert not hasher.verify("{BLF-CRYPT}" + value, "x" * 71)


@pytest.mark.parametrize(
    "value",
    [
        "$2x$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G",  # buggy variant
        "$2y$03$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G",  # cost below 4
        "$2y$32$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G",
        "$2y$5$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G",
        "$2y$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/",
        "$2y$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/G=",
        "$2y$05$v.3UJ.6SWIGBmVISvwFzwOHUlxFnlTXztGMe0EV3yDq/4EzzVjx/H",
        "$2y$05$",
        "",
    ],
)
def test_bcrypt_malformed(hasher: PasswordHasher, value: str) -> None:
    assert not hasher.verify("{BLF-CRYPT}" + value, HELLO)


@pytest.mark.parametrize(
    "value",
    [
        "$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0",  # MD5-crypt
        "rl0uE2bQF0Yzk",  # DES-crypt
        "$y$j9T$salt$hash",  # yescrypt
        "",
        "$7$",
    ],
)
def test_crypt_refuses_other_algorithms(hasher: PasswordHasher, value: str) -> None:
    assert not hasher.verify("{CRYPT}" + value, HELLO)
    assert not is_verifiable("{CRYPT}" + value)


@pytest.mark.parametrize(
    "stored",
    [
        "{SHA256}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5R==",  # bad base64
        "{SHA256}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5Ro",  # missing padding
        "{SHA256}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5Ro=\n",
        "{SHA256}" + base64.b64encode(hashlib.sha256(b"Hello world!").digest() + b"s").decode(),
        "{SHA256}c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51",  # odd hex
        "{SHA256.HEX}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5Ro=",
        "{SHA256.B64}c0535e4be2b79ffd93291305436bf889314e4a3faec05ecffcbb7df31ad9e51a",
        "{SHA256.XYZ}wFNeS+K3n/2TKRMFQ2v4iTFOSj+uwF7P/Lt98xrZ5Ro=",
        "{SSHA256}"
        + base64.b64encode(hashlib.sha256(b"Hello world!").digest()).decode(),  # no salt
        "{SSHA256}AAAA",
        "{SHA}",
        "{SSHA}",
        "{SHA512}пароль",
        "{ARGON2ID.HEX}00",
        "{PLAIN.HEX}48656c6c6f20776f726c6421",
    ],
)
def test_digest_schemes_malformed(hasher: PasswordHasher, stored: str) -> None:
    assert not hasher.verify(stored, HELLO)


def test_digest_scheme_encodings(hasher: PasswordHasher) -> None:
    salt = b"\x00\xffsalt"
    digest = hashlib.sha512(b"Hello world!" + salt).digest()
    assert hasher.verify("{SSHA512}" + base64.b64encode(digest + salt).decode(), HELLO)
    assert hasher.verify("{SSHA512.HEX}" + (digest + salt).hex(), HELLO)
    assert hasher.verify("{ssha512.b64}" + base64.b64encode(digest + salt).decode(), HELLO)
    assert hasher.verify("{SSHA512.BASE64}" + base64.b64encode(digest + salt).decode(), HELLO)
    plain = hashlib.sha1(b"Hello world!").digest()
    assert hasher.verify("{SHA}" + plain.hex().upper(), HELLO)
    assert hasher.verify("{SHA.HEX}" + plain.hex(), HELLO)


@pytest.mark.parametrize(
    "stored",
    [
        # 1000 iterations: below RFC 7677's minimum even if the keys match.
        "{SCRAM-SHA-256}1000,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,"
        "RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=",
        "{SCRAM-SHA-256}4096,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=",
        "{SCRAM-SHA-256}4096,,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,"
        "RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=",
        "{SCRAM-SHA-256}04096,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,"
        "RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=",
        "{SCRAM-SHA-256}4096,xi9wzNGJoiykMy1fRcduJw==,!!!,RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqws=",
        # The SHA-1 keys under the SHA-256 name.
        "{SCRAM-SHA-256}4096,Rt0BHiVgCu9eErV0w8v1eg==,mQUcEaa8JoA9+ngL81u0UkqJ5bo=,"
        "i7BQ1zuxtNSFZCg3hyAP0zmU+U4=",
        # A wrong ServerKey with the right StoredKey.
        "{SCRAM-SHA-256}4096,xi9wzNGJoiykMy1fRcduJw==,qrPSHkAYbBZKRldOSbTQ48dMigFZvH2OfMpzdsOAlds=,"
        "RtX4kKnBqTGr7XnXZWqSXIhT4OymoLnbyMwE9NSdqwA=",
        "{SCRAM-SHA-256}",
    ],
)
def test_dovecot_scram_malformed(hasher: PasswordHasher, stored: str) -> None:
    assert not hasher.verify(stored, "pencil")


def test_scheme_of_and_is_verifiable() -> None:
    assert scheme_of("{sha512-crypt}$6$x") == "SHA512-CRYPT"
    assert scheme_of("{SHA256.HEX}00") == "SHA256.HEX"
    assert scheme_of("$6$x") is None
    assert scheme_of("") is None
    assert is_verifiable("{SHA256.HEX}anything")
    assert is_verifiable("{ARGON2ID}garbage")  # the scheme is known; the value is not checked
    assert is_verifiable("{CRYPT}$6$anything")
    assert not is_verifiable("{CRYPT}$1$anything")
    assert not is_verifiable("{MD5-CRYPT}$1$anything")
    assert not is_verifiable("{CRAM-MD5}00")
    assert not is_verifiable("{SHA256.ZZ}00")
    assert not is_verifiable("$6$anything")
    assert not is_verifiable("{PLAIN")


@settings(max_examples=300, deadline=None)
@given(
    scheme=st.sampled_from([*sorted(SCHEMES - {"ARGON2ID", "ARGON2I"}), "SHA256.HEX", "SSHA.B64"]),
    body=st.one_of(
        st.text(max_size=120),
        st.sampled_from([value for value, _ in SHA_CRYPT_VECTORS]).map(lambda v: v[:-3] + "xyz"),
        st.from_regex(r"\$2[aby]\$0[4-6]\$[./A-Za-z0-9]{53}", fullmatch=True),
        st.from_regex(
            r"\$[56]\$(rounds=[0-9]{1,5}\$)?[^$]{0,20}\$[./A-Za-z0-9]{40,90}", fullmatch=True
        ),
    ),
    password=st.text(max_size=40),
)
def test_foreign_schemes_never_raise(scheme: str, body: str, password: str) -> None:
    hasher = PasswordHasher(FAST)
    assert hasher.verify(f"{{{scheme}}}{body}", password) in (True, False)
    assert hasher.needs_rehash(f"{{{scheme}}}{body}")
