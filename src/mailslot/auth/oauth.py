"""OAuth 2.0 bearer tokens (for OAUTHBEARER and XOAUTH2), checked locally as
signed JWTs with PyJWT: the issuer's public key (a PEM file, or a JWKS
document with one or more keys, picked by ``kid``), the expected issuer
and audience, an expiry.  The login is one claim of the token
(``auth.oauth_username_claim``, ``email`` by default).

Only asymmetric signatures are accepted (RSA, RSA-PSS, ECDSA, EdDSA): a
token signed with ``none`` or an HMAC secret never verifies.
"""

from __future__ import annotations

from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = ["BearerVerifier", "OAuthConfigError"]

_BY_KEY_TYPE: dict[type, list[str]] = {
    rsa.RSAPublicKey: ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    ec.EllipticCurvePublicKey: ["ES256", "ES384", "ES512"],
    ed25519.Ed25519PublicKey: ["EdDSA"],
    ed448.Ed448PublicKey: ["EdDSA"],
}
#: Clock skew allowed on exp/nbf/iat, in seconds.
LEEWAY = 30


class OAuthConfigError(Exception):
    """The key file cannot be used."""


def _algorithms(key: object) -> list[str]:
    for kind, names in _BY_KEY_TYPE.items():
        if isinstance(key, kind):
            return names
    raise OAuthConfigError("not an RSA, EC or EdDSA public key")


class BearerVerifier:
    """Checks tokens against one issuer's keys.  Thread-safe (read-only)."""

    def __init__(self, key_file: str, *, issuer: str, audience: str, claim: str) -> None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OAuthConfigError(f"cannot read {key_file}: {exc}") from None
        self._keys: dict[str | None, tuple[object, list[str]]] = {}
        try:
            if text.lstrip().startswith("{"):
                for jwk in jwt.PyJWKSet.from_json(text).keys:
                    self._keys[jwk.key_id] = (jwk.key, _algorithms(jwk.key))
            else:
                key = load_pem_public_key(text.encode())
                self._keys[None] = (key, _algorithms(key))
        except (ValueError, jwt.PyJWTError) as exc:
            raise OAuthConfigError(f"{key_file}: {exc}") from None
        self._issuer = issuer
        self._audience = audience
        self._claim = claim

    def login(self, token: str) -> str | None:
        """The login ``token`` is valid for, or None."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key, algorithms = self._keys.get(kid) or self._keys[None]
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, KeyError):
            return None
        value = claims.get(self._claim)
        return value if isinstance(value, str) and value else None
