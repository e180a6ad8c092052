"""Settings: validation, and the README documenting every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailslot.config import ConfigError, load_settings, parse_address, setting_keys

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_table_documents_every_setting() -> None:
    table = re.findall(r"^\| `([a-z0-9_.]+)` \|", README, re.MULTILINE)
    assert sorted(table) == sorted(setting_keys())


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", README, re.DOTALL))
def test_readme_toml_examples_are_valid(block: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(block)
    load_settings(config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pop3.listen", ["nowhere"], "expected host:port"),
        ("pop3.listen", ["127.0.0.1:99999"], "port out of range"),
        ("pop3.autologout", 0, "must be >="),
        ("pop3.expire", "sometimes", "never"),
        ("server.max_connections", True, "expected an integer"),
        ("auth.mechanisms", ["KERBEROS_V4"], "unknown mechanism"),
        ("auth.plaintext_without_tls", "yes", "true or false"),
        ("lmtp.socket_mode", "999", "octal"),
        ("tls.min_version", "TLSv1.1", "TLSv1.2"),
        ("storage.mail_location", "/srv/{domain}", "{user}"),
        ("pop3.nonsense", 1, "unknown setting"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, {key: value})
    assert exc.value.key == key
    assert message in str(exc.value)


def test_cross_checks() -> None:
    with pytest.raises(ConfigError, match=r"tls\.key"):
        load_settings(None, {"tls.cert": "c.pem"})
    with pytest.raises(ConfigError, match=r"pop3s\.listen"):
        load_settings(None, {"pop3s.listen": ["127.0.0.1:995"]})
    with pytest.raises(ConfigError, match="store_secrets"):
        load_settings(None, {"auth.apop": True})


def test_addresses() -> None:
    assert str(parse_address("[::1]:110")) == "[::1]:110"
    assert parse_address(":110").host == "0.0.0.0"
    settings = load_settings(None, {"pop3.listen": "127.0.0.1:1110"})
    assert [str(a) for a in settings.pop3_listen] == ["127.0.0.1:1110"]


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "mailslot.toml"
    config.parent.mkdir()
    config.write_text('[server]\ndata_dir = "../var"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    settings = load_settings(config)
    assert settings.data_dir == (tmp_path / "var").resolve()
    assert settings.data_path("c.pem") == (tmp_path / "var" / "c.pem").resolve()
    assert settings.mail_template.startswith(str(settings.data_dir))


def test_the_mechanism_list_is_the_sasl_packages() -> None:
    # config imports nothing of mailslot (DESIGN.md), so it keeps its own copy.
    from mailslot import sasl  # noqa: PLC0415
    from mailslot.config import SASL_MECHANISMS  # noqa: PLC0415

    assert sasl.MECHANISMS == SASL_MECHANISMS
