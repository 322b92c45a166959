"""Coinfloor login maths (AUTH.md): secp224k1 ECDSA over SHA-224.

* private key = SHA-224(user_id as 8 bytes big-endian || UTF-8 passphrase), as an integer
* message     = user_id (8 bytes) || server nonce (16 bytes) || client nonce (16 bytes)
* signature   = ECDSA(SHA-224(message)) on secp224k1; r and s sent as exactly 28 bytes each,
  base64-encoded (IMPL-GUIDE's DER rule: left-pad, or strip one leading 0x00).

Library choice: ``fastecdsa`` ships secp224k1 as a named curve, signs with RFC 6979
deterministic nonces, is implemented in C over GMP (sign ~0.6 ms, verify ~0.2 ms here) and
has wheels on PyPI.  python-ecdsa would need a hand-built curve and its signing is not
constant-time (GHSA-wj6h-64fc-37mp).  The curve order n of secp224k1 is 225 bits, so r and s
may need 29 bytes; such values cannot be sent in 28, and :func:`sign` avoids them so every
signature we send fits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from fastecdsa import curve as _curve
from fastecdsa import ecdsa as _ecdsa
from fastecdsa import keys as _keys
from fastecdsa.point import Point

from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.secret import Secret

CURVE = _curve.secp224k1
NONCE_BYTES = 16
COMPONENT_BYTES = 28

PublicKey = Point


def derive_private_key(user_id: int, passphrase: Secret[str] | str) -> Secret[int]:
    """The 224-bit private key of AUTH.md, wrapped so it never prints."""
    phrase = passphrase.reveal() if isinstance(passphrase, Secret) else passphrase
    seed = user_id.to_bytes(8, "big") + phrase.encode("utf-8")
    return Secret(int.from_bytes(hashlib.sha224(seed).digest(), "big"), "private key")


def public_key(private_key: Secret[int]) -> PublicKey:
    return _keys.get_public_key(private_key.reveal(), CURVE)


def signed_message(user_id: int, server_nonce: bytes, client_nonce: bytes) -> bytes:
    if len(server_nonce) != NONCE_BYTES or len(client_nonce) != NONCE_BYTES:
        raise LocalProtocolError("server and client nonces must be 16 bytes each")
    return user_id.to_bytes(8, "big") + server_nonce + client_nonce


def component_to_b64(value: int) -> str:
    """Encode r or s as exactly 28 big-endian bytes in base64 (40 characters)."""
    if not 0 < value < 2 ** (8 * COMPONENT_BYTES):
        raise LocalProtocolError("signature component does not fit 28 bytes")
    return base64.b64encode(value.to_bytes(COMPONENT_BYTES, "big")).decode("ascii")


def component_from_b64(text: str, field: str = "signature") -> int:
    """Decode a base64 r or s; it must be exactly 28 bytes (raises RemoteProtocolError)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise RemoteProtocolError(f"{field} is not valid base64", field=field) from None
    if len(raw) != COMPONENT_BYTES:
        raise RemoteProtocolError(f"{field} must be 28 bytes, was {len(raw)}", field=field)
    return int.from_bytes(raw, "big")


def der_to_components(der: bytes) -> tuple[bytes, bytes]:
    """IMPL-GUIDE's algorithm: extract r and s from a DER ECDSA-Sig-Value as 28 bytes each."""

    def fit(b: bytes) -> bytes:
        if len(b) == COMPONENT_BYTES + 1:
            if b[0] != 0:
                raise LocalProtocolError("29-byte DER integer must start with 0x00")
            return b[1:]
        if len(b) > COMPONENT_BYTES + 1:
            raise LocalProtocolError("DER integer longer than 29 bytes")
        return b.rjust(COMPONENT_BYTES, b"\x00")

    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2 or der[2] != 0x02:
        raise LocalProtocolError("not a DER ECDSA-Sig-Value")
    rlen = der[3]
    r = der[4 : 4 + rlen]
    i = 4 + rlen
    if der[i] != 0x02:
        raise LocalProtocolError("DER: second INTEGER tag missing")
    slen = der[i + 1]
    s = der[i + 2 : i + 2 + slen]
    if i + 2 + slen != len(der):
        raise LocalProtocolError("DER: trailing bytes after s")
    return fit(r), fit(s)


def new_nonce() -> bytes:
    """A fresh 16-byte nonce from the OS CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


def sign(private_key: Secret[int], message: bytes) -> tuple[str, str]:
    """Sign ``message`` and return (r, s) as 28-byte base64 strings.

    fastecdsa derives k by RFC 6979.  The curve order is 225 bits, so r or s can (with
    probability ~2**-32) exceed 28 bytes: then s is replaced by n - s if that fits, or the
    message is re-signed with a fresh CSPRNG nonce k.
    """
    d = private_key.reveal()
    r, s = _ecdsa.sign(message, d, curve=CURVE, hashfunc=hashlib.sha224)
    limit = 2 ** (8 * COMPONENT_BYTES)
    while r >= limit or s >= limit:
        # Low-s normalisation keeps the signature valid (ECDSA is malleable in s).
        if r < limit and CURVE.q - s < limit:
            s = CURVE.q - s
            break
        k = secrets.randbelow(CURVE.q - 1) + 1
        r, s = _sign_with_k(message, d, k)
    return component_to_b64(r), component_to_b64(s)


def _sign_with_k(message: bytes, d: int, k: int) -> tuple[int, int]:
    z = int.from_bytes(hashlib.sha224(message).digest(), "big")
    n = CURVE.q
    R = k * CURVE.G
    r = R.x % n
    s = (pow(k, -1, n) * (z + r * d)) % n
    return r, s


def verify(pub: PublicKey, message: bytes, signature: tuple[str, str]) -> bool:
    """True iff ``signature`` (two base64 strings) is a valid signature of ``message``.

    Malformed encodings, r or s outside [1, n-1] and wrong lengths all give False.
    """
    try:
        r = component_from_b64(signature[0])
        s = component_from_b64(signature[1])
    except RemoteProtocolError:
        return False
    n = CURVE.q
    if not (1 <= r < n and 1 <= s < n):
        return False
    try:
        return bool(_ecdsa.verify((r, s), message, pub, curve=CURVE, hashfunc=hashlib.sha224))
    except Exception:  # fastecdsa raises on points/values it rejects: that is "invalid"
        return False


def b64_nonce(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def nonce_from_b64(text: str, field: str = "nonce") -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise RemoteProtocolError(f"{field} is not valid base64", field=field) from None
    if len(raw) != NONCE_BYTES:
        raise RemoteProtocolError(f"{field} must be 16 bytes, was {len(raw)}", field=field)
    return raw
