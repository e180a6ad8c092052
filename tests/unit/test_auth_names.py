"""Login names → accounts: the spellings that agree, and every rejected class."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailslot.auth import MAX_NAME_OCTETS, Account, InvalidName, parse_domain, parse_login

DEFAULT = "example.com"


def acct(user: str, domain: str = DEFAULT) -> Account:
    return Account(user=user, domain=domain)


VALID: list[tuple[str, Account]] = [
    ("john", acct("john")),
    ("John", acct("john")),
    ("john@host", acct("john", "host")),
    ("john+host", acct("john", "host")),
    ("JOHN@HOST", acct("john", "host")),
    ("JOHN+Host", acct("john", "host")),
    # "@" present: split at the last "@", "+" means nothing.
    ("a@b@host", acct("a@b", "host")),
    ("a+b@host", acct("a+b", "host")),
    ("a@b+c", acct("a", "b+c")),
    # "+" only: split at the last "+".
    ("a+b+host", acct("a+b", "host")),
    ("john.smith@mail.example.org", acct("john.smith", "mail.example.org")),
    ("john.", acct("john.")),
    ("j_o-h%n!", acct("j_o-h%n!")),
    # UTF-8 names (RFC 6856).
    ("josé", acct("josé")),
    ("JOSÉ", acct("josé")),
    ("jose\u0301", acct("josé")),  # decomposed é → NFC
    ("пользователь@пример.рф", acct("пользователь", "пример.рф")),
    ("ПОЛЬЗОВАТЕЛЬ+ПРИМЕР.РФ", acct("пользователь", "пример.рф")),
    ("用户@例子.中国", acct("用户", "例子.中国")),
    ("\u212a", acct("k")),  # KELVIN SIGN lower-cases to k
    ("x" * 200 + "@" + "d" * 54, acct("x" * 200, "d" * 54)),  # exactly 255 octets
]


@pytest.mark.parametrize(("login", "expected"), VALID)
def test_valid_logins(login: str, expected: Account) -> None:
    assert parse_login(login, default_domain=DEFAULT) == expected


def test_the_three_spellings_name_one_account() -> None:
    spellings = ["john@host", "john+host", "JOHN+Host", "John@HOST"]
    accounts = {parse_login(s, default_domain="elsewhere") for s in spellings}
    assert accounts == {acct("john", "host")}
    assert parse_login("john", default_domain="Host") == acct("john", "host")


def test_name_property() -> None:
    assert parse_login("JOHN+Example.COM", default_domain="x").name == "john@example.com"


INVALID: list[tuple[str, str]] = [
    # (login, a word the reason must contain)
    ("", "empty"),
    ("@host", "empty user"),
    ("+host", "empty user"),
    ("john@", "empty domain"),
    ("john+", "empty domain"),
    ("x" * 200 + "@" + "d" * 55, "longer"),  # 256 octets
    ("é" * 128 + "@h", "longer"),  # 256 + 2 octets, 130 code points
    ("x" * 5000, "longer"),
    ("jo\x00hn", "control"),
    ("john\t", "control"),
    ("jo\rhn", "control"),
    ("jo\nhn", "control"),
    ("\x1bjohn", "control"),
    ("jo\x7fhn", "control"),
    ("jo\x85hn", "control"),  # C1 NEL
    ("jo\ud800hn", "control"),  # lone surrogate
    ("john@ho\x00st", "control"),
    ("jo hn", "space"),
    ("john@ho st", "space"),
    ("jo\u00a0hn", "space"),  # NBSP
    ("jo\u2028hn", "space"),  # LINE SEPARATOR
    ("jo/hn", "separator"),
    ("jo\\hn", "separator"),
    ("john@host/..", "separator"),
    ("../etc@host", "separator"),
    ("john@a\\b", "separator"),
    (".", "dot"),
    ("..", "dot"),
    ("./host", "separator"),
    (".@host", "dot"),
    ("..@host", "dot"),
    ("john@.", "dot"),
    ("john@..", "dot"),
    ("john+..", "dot"),
    (".john@host", "dot"),
    ("john@.host", "dot"),
    ("jo..hn@host", "'..'"),
    ("john@ho..st", "'..'"),
]


@pytest.mark.parametrize(("login", "reason"), INVALID)
def test_invalid_logins(login: str, reason: str) -> None:
    with pytest.raises(InvalidName) as info:
        parse_login(login, default_domain=DEFAULT)
    message = str(info.value)
    assert reason in message
    # The reason never echoes the (attacker-chosen) input.
    if len(login) > 2:
        assert login not in message


def test_invalid_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)


@pytest.mark.parametrize(
    "domain",
    ["", ".", "..", ".example.com", "exa..mple", "a/b", "a\\b", "a b", "a\x00b", "a@b", "d" * 254],
)
def test_invalid_default_domain_is_a_plain_value_error(domain: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_login("john", default_domain=domain)
    # A configuration error, not the client's: not an InvalidName.
    assert not isinstance(info.value, InvalidName)


def test_default_domain_is_normalised() -> None:
    assert parse_login("john", default_domain="Example.COM") == acct("john", "example.com")
    assert parse_domain("ПРИМЕР.РФ") == "пример.рф"


def test_default_domain_not_used_when_login_has_a_domain() -> None:
    assert parse_login("john@host", default_domain="d" * 250).domain == "host"


@pytest.mark.parametrize(
    ("user", "domain"),
    [("John", "host"), ("john", "Host"), ("jose\u0301", "host"), ("a/b", "host"), ("a", "b@c")],
)
def test_account_rejects_non_canonical_or_unsafe_parts(user: str, domain: str) -> None:
    with pytest.raises(InvalidName):
        Account(user=user, domain=domain)


# -- properties ---------------------------------------------------------------

logins = st.text(
    alphabet=st.one_of(
        st.sampled_from("@+./\\ \t\r\n\x00\x7f\x85\u2028.Aé\u0301İK\u212a"),
        st.characters(codec=None),  # anything, surrogates included
        st.characters(min_codepoint=0, max_codepoint=0x7F),
    ),
    max_size=300,
)


@given(logins)
@example("..")
@example("a@..")
@example("a+b+c")
@example("İ" * 100)
def test_parse_login_raises_only_invalid_name_and_returns_safe_parts(login: str) -> None:
    try:
        account = parse_login(login, default_domain=DEFAULT)
    except InvalidName:
        return
    for part in (account.user, account.domain):
        assert part
        assert part not in (".", "..")
        assert not part.startswith(".")
        assert ".." not in part
        assert "/" not in part
        assert "\\" not in part
        assert "\x00" not in part
        assert all(unicodedata.category(c) not in ("Cc", "Cs", "Zs", "Zl", "Zp") for c in part)
    assert "@" not in account.domain
    assert len(account.name.encode("utf-8")) <= MAX_NAME_OCTETS
    # The canonical name is a fixed point: it parses back to the same account.
    assert parse_login(account.name, default_domain="other.example") == account


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="@+"), max_size=40))
def test_spelling_and_lower_case_do_not_matter(user: str) -> None:
    try:
        expected = parse_login(f"{user}@Host", default_domain=DEFAULT)
    except InvalidName:
        return
    assert parse_login(f"{user.lower()}+HOST", default_domain=DEFAULT) == expected
    assert parse_login(user, default_domain="host") == expected


@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
)
def test_ascii_names_are_case_insensitive(user: str) -> None:
    # Only a lower-case mapping is promised: "ß".upper() == "SS" names another account.
    expected = parse_login(f"{user}@host", default_domain=DEFAULT)
    assert parse_login(f"{user.upper()}+HOST", default_domain=DEFAULT) == expected
    assert parse_login(f"{user.swapcase()}@HoSt", default_domain=DEFAULT) == expected
