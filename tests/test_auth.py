"""P1 and X4/X7 at the maths level: AUTH.md's worked example is a known-answer test."""

from __future__ import annotations

import base64
import random

import pytest

from engine.errors import LocalProtocolError
from engine.protocol import auth
from engine.secret import Secret

SERVER_NONCE_B64 = "azRzAi5rm1ry/l0drnz1vw=="
CLIENT_NONCE_B64 = "8IyYyvH9gujOqYJdv/BP0A=="
SIG_R = "P7d6nXtbKmggnnb2hyB4xXkTQNWYmFSto6tzXg=="
SIG_S = "NLhDQS8YqRDxin1M4dNZeGDmNFsiv3iUz2d4Cg=="


def test_p1_private_key_known_answer():
    key = auth.derive_private_key(1, Secret("opensesame"))
    assert key.reveal() == 0xB89EA7FCD22CC059C2673DC24FF40B978307464686560D0AD7561B83
    assert "b89ea7fc" not in repr(key) and str(key.reveal()) not in repr(key)


def test_p1_nonces_decode_as_documented():
    assert auth.nonce_from_b64(SERVER_NONCE_B64) == bytes.fromhex("6b3473022e6b9b5af2fe5d1dae7cf5bf")
    assert auth.nonce_from_b64(CLIENT_NONCE_B64) == bytes.fromhex("f08c98caf1fd82e8cea9825dbff04fd0")


def test_p1_document_signature_verifies():
    msg = auth.signed_message(1, auth.nonce_from_b64(SERVER_NONCE_B64), auth.nonce_from_b64(CLIENT_NONCE_B64))
    assert msg.hex() == "0000000000000001" "6b3473022e6b9b5af2fe5d1dae7cf5bf" "f08c98caf1fd82e8cea9825dbff04fd0"
    pub = auth.public_key(auth.derive_private_key(1, "opensesame"))
    assert auth.verify(pub, msg, (SIG_R, SIG_S))
    assert auth.component_from_b64(SIG_R) == 0x3FB77A9D7B5B2A68209E76F6872078C5791340D5989854ADA3AB735E
    assert auth.component_from_b64(SIG_S) == 0x34B843412F18A910F18A7D4CE1D3597860E6345B22BF7894CF67780A


def test_p1_our_signatures_verify_and_are_28_bytes():
    rnd = random.Random(7)
    for i in range(300):
        uid = rnd.randrange(1, 2**40)
        key = auth.derive_private_key(uid, f"pass-{i}")
        pub = auth.public_key(key)
        msg = auth.signed_message(uid, rnd.randbytes(16), rnd.randbytes(16))
        r, s = auth.sign(key, msg)
        assert len(r) == len(s) == 40
        assert len(base64.b64decode(r)) == len(base64.b64decode(s)) == 28
        assert auth.verify(pub, msg, (r, s))


def test_x4_forgeries_rejected():
    key = auth.derive_private_key(1, "opensesame")
    pub = auth.public_key(key)
    msg = auth.signed_message(1, bytes(16), bytes(range(16)))
    r, s = auth.sign(key, msg)
    raw_r = bytearray(base64.b64decode(r))
    raw_r[5] ^= 0x01
    flipped = base64.b64encode(bytes(raw_r)).decode()
    n = auth.CURVE.q
    bad = [
        (flipped, s),
        (s, r),
        (r, r),
        (auth.component_to_b64(1), s),
        (base64.b64encode(bytes(28)).decode(), s),  # r = 0
        (r, base64.b64encode(bytes(28)).decode()),  # s = 0
        (r, "not base64!"),
        (r, base64.b64encode(bytes(27) + b"\x01").decode()[:-4]),  # wrong length
        (r, base64.b64encode((n + 1).to_bytes(29, "big")).decode()),  # 29 bytes
    ]
    for sig in bad:
        assert not auth.verify(pub, msg, sig), sig
    # wrong message (other uid / nonce) and wrong key
    assert not auth.verify(pub, auth.signed_message(2, bytes(16), bytes(range(16))), (r, s))
    assert not auth.verify(auth.public_key(auth.derive_private_key(1, "opensesamf")), msg, (r, s))


def test_x7_client_nonces_are_fresh():
    seen = {auth.new_nonce() for _ in range(10000)}
    assert len(seen) == 10000 and all(len(x) == 16 for x in seen)


def test_der_extraction_rules():
    # r with a leading 0x00 (29 bytes) and a short s (27 bytes)
    r = b"\x00" + b"\x80" + bytes(27)
    s = b"\x01" * 27
    der = bytes([0x30, 2 + len(r) + 2 + len(s), 0x02, len(r)]) + r + bytes([0x02, len(s)]) + s
    out_r, out_s = auth.der_to_components(der)
    assert out_r == r[1:] and len(out_r) == 28
    assert out_s == b"\x00" + s and len(out_s) == 28
    with pytest.raises(LocalProtocolError):
        auth.der_to_components(b"\x31" + der[1:])


def test_secret_masks_everywhere():
    s = Secret("canary-passphrase-123", "passphrase")
    for text in (repr(s), str(s), f"{s}", f"{s!r}", "%s" % s):
        assert "canary" not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)
