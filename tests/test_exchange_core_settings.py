"""Exchange settings: the schema refuses what it cannot use, with the path and the reason;
secrets come only from env vars, 0600 files or the explicit demo flag, and never print."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgspec
import pytest

from engine.errors import ConfigError, SecretError
from engine.exchange.core import Exchange
from engine.exchange.settings import (
    DEMO_COOKIE,
    ExchangeSettings,
    FeeTier,
    InvalidSettings,
    RateLimitSettings,
    UserSettings,
    resolve_credentials,
)
from engine.protocol import auth
from engine.protocol.messages import Authenticate, AuthenticateReply


def _load(data: dict) -> ExchangeSettings:  # type: ignore[type-arg]
    return msgspec.convert(data, ExchangeSettings)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"users": [{"user_id": 1, "cookie": "x"}]}, r"unknown field `cookie`.*users\[0\]"),
        ({"usres": []}, "unknown field `usres`"),
        ({"users": [{"user_id": 0}]}, "user_id must be a positive"),
        ({"users": [{"user_id": 1}, {"user_id": 1}]}, "appears twice"),
        ({"users": [{"user_id": 1, "balances": {"GBP": "1.001"}}]}, r"users\[0\].balances.GBP.*at most 2 decimal places"),
        ({"users": [{"user_id": 1, "balances": {"GBP": 10.5}}]}, r"Expected `str`, got `float`"),
        ({"users": [{"user_id": 1, "balances": {"DOGE": "1"}}]}, "unknown asset 'DOGE'"),
        ({"users": [{"user_id": 1, "balances": {"GBP": "-1"}}]}, "must not be negative"),
        ({"users": [{"user_id": 1, "demo": True, "cookie_env": "C"}]}, "demo users use the AUTH.md"),
        ({"users": [{"user_id": 1, "cookie_env": "C"}]}, "both a cookie source and a passphrase source"),
        ({"users": [{"user_id": 1, "cookie_env": "C", "cookie_file": "f", "passphrase_env": "P"}]}, "not both"),
        ({"markets": [{"base": "XBT", "counter": "USD"}]}, "unknown market"),
        ({"markets": []}, "at least one pair"),
        ({"fees": [{"maker_ppm": 1_000_000}]}, r"maker_ppm must be in \[0, 1000000\)"),
        ({"fees": [{"min_volume": "-1"}]}, "must not be negative"),
        ({"fees": [{"min_volume": "0.000000001"}]}, r"fees\[0\].min_volume"),
        ({"limits": {"orders": {"count": 0, "per": 1.0}}}, "rate limit must be positive"),
        ({"limits": {"algorithm": "leaky"}}, "Invalid enum value 'leaky'"),
        ({"api_version": 3}, "Invalid enum value 3"),
        ({"max_open_orders": 0}, "max_open_orders must be > 0"),
        ({"policy": {"self_trade": "forbid"}}, "Invalid enum value 'forbid'"),
    ],
)
def test_bad_settings_are_refused_with_path_and_reason(data: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises((msgspec.ValidationError, InvalidSettings), match=match):
        _load(data)


def test_invalid_settings_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_open_orders"):
        ExchangeSettings(max_open_orders=-1)


def test_defaults() -> None:
    s = ExchangeSettings()
    assert [m.market.name for m in s.markets] == ["XBT:GBP", "XBT:EUR"]
    assert s.fees == [FeeTier(min_volume="0", maker_ppm=300, taker_ppm=300)]
    assert s.api_version == 2 and s.max_open_orders == 1000 and s.watch_depth == 1000
    assert s.limits.algorithm == "window"
    assert (s.limits.orders, s.limits.info, s.limits.auth) == (
        RateLimitSettings(count=1000, per=1000.0, scope="user"),
        RateLimitSettings(count=10, per=10.0, scope="session"),
        RateLimitSettings(count=1000, per=3600.0, scope="user"),
    )
    assert s.policy.self_trade == "allow" and not s.policy.open_notice_before_match


def test_credentials_from_env_and_file_never_print(tmp_path: Path) -> None:
    phrase_file = tmp_path / "phrase"
    phrase_file.write_text("correct horse\n")
    os.chmod(phrase_file, 0o600)
    st = ExchangeSettings(
        users=[
            UserSettings(user_id=7, cookie_env="CF_COOKIE_7", passphrase_file=str(phrase_file)),
            UserSettings(user_id=8),  # internal only
        ]
    )
    creds = resolve_credentials(st, environ={"CF_COOKIE_7": "c00kie"})
    assert list(creds) == [7]
    assert creds[7].cookie.reveal() == "c00kie" and creds[7].passphrase.reveal() == "correct horse"
    assert "c00kie" not in repr(creds) and "horse" not in repr(creds)
    with pytest.raises(SecretError, match="CF_COOKIE_7 is not set") as ei:
        resolve_credentials(st, environ={})
    assert "horse" not in str(ei.value)
    os.chmod(phrase_file, 0o644)
    with pytest.raises(SecretError, match="mode 0644"):
        resolve_credentials(st, environ={"CF_COOKIE_7": "c00kie"})
    os.chmod(phrase_file, 0o600)
    # the exchange derives the public key once; the passphrase works over the wire
    ex = Exchange(st, clock_us=lambda: 1, rng=random.Random(), environ={"CF_COOKIE_7": "c00kie"})
    s = ex.open_session(lambda n: None)
    nonce = auth.new_nonce()
    sig = auth.sign(auth.derive_private_key(7, "correct horse"), auth.signed_message(7, s.server_nonce, nonce))
    cmd = Authenticate(user_id=7, cookie="c00kie", nonce=auth.b64_nonce(nonce), signature=sig)
    assert ex.handle(s, cmd) == AuthenticateReply()
    assert "horse" not in repr(ex.__dict__) and "c00kie" not in repr(ex.__dict__)


def test_demo_flag_is_the_only_way_to_the_auth_md_credentials() -> None:
    st = ExchangeSettings(users=[UserSettings(user_id=1, demo=True), UserSettings(user_id=2)])
    creds = resolve_credentials(st, environ={})
    assert list(creds) == [1] and creds[1].cookie.reveal() == DEMO_COOKIE
    assert "opensesame" not in repr(creds)
