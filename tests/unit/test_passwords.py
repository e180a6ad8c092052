"""Password hashing: round trips, hostile stored values, schemes, rehash."""

from __future__ import annotations

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailslot.auth import SCHEMES, HashParams, PasswordHasher

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
    assert {"ARGON2ID", "ARGON2I", "PLAIN"} <= SCHEMES


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
