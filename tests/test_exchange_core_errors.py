"""P10-style: every error row of WEBSOCKET-README, with its exact code and text, from the
exchange core; plus Authenticate (AUTH.md known answer, X4 forgeries), tonce edges (F3)
and user isolation (X5)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.exchange.core import Exchange, Session
from engine.exchange.settings import LimitsSettings, RateLimitSettings
from engine.protocol import auth
from engine.protocol.codec import CODEC, BadCommand
from engine.protocol.messages import (
    UNSET,
    Authenticate,
    AuthenticateReply,
    CancelAllOrders,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    EstimateMarketOrder,
    GetBalances,
    GetOrders,
    GetTradeVolume,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    WatchOrders,
    WatchTicker,
)
from tests.test_exchange_core_helpers import EUR_C, GBP_C, XBT_C, Harness, settings

SPEC = Path("/work/shared/coinfloor-api/WEBSOCKET-README.md")

# (method, code, text) of every documented error row except the "(varies)" ones.
SPEC_ROWS: set[tuple[str, int, str]] = {
    ("Authenticate", 1, "There is no such user."),
    ("Authenticate", 6, "You are making authentication attempts too rapidly."),
    ("Authenticate", 7, "You sent an incorrect login cookie."),
    ("Authenticate", 7, "You sent an incorrect signature. This probably means you used a wrong passphrase."),
    ("GetBalances", 6, "You are making information requests too rapidly."),
    ("GetBalances", 7, "You are not authenticated."),
    ("GetOrders", 6, "You are making information requests too rapidly."),
    ("GetOrders", 7, "You are not authenticated."),
    ("EstimateMarketOrder", 1, "You specified an invalid asset pair."),
    ("EstimateMarketOrder", 6, "You are sending orders too rapidly."),
    ("EstimateMarketOrder", 8, "Quantity must not be zero."),
    ("EstimateMarketOrder", 8, "Total must not be zero."),
    ("EstimateMarketOrder", 8, "You must specify either quantity or total for a market order."),
    ("PlaceOrder", 1, "You specified an invalid asset pair."),
    ("PlaceOrder", 3, "Tonce is out of sequence."),
    ("PlaceOrder", 4, "You have insufficient funds."),
    ("PlaceOrder", 5, "You have too many outstanding orders."),
    ("PlaceOrder", 6, "You are sending orders too rapidly."),
    ("PlaceOrder", 7, "You are not authenticated."),
    ("PlaceOrder", 8, "Tonce must not be zero."),
    ("PlaceOrder", 8, "Price must not be zero."),
    ("PlaceOrder", 8, "Quantity must not be zero."),
    ("PlaceOrder", 8, "Order total would overflow."),
    ("PlaceOrder", 8, "You must specify either quantity or total for a market order."),
    ("CancelOrder", 1, "The specified order was not found."),
    ("CancelOrder", 6, "You are sending orders too rapidly."),
    ("CancelOrder", 7, "You are not authenticated."),
    ("CancelOrder", 8, "You must specify either order ID or tonce."),
    ("CancelAllOrders", 6, "You are sending orders too rapidly."),
    ("CancelAllOrders", 7, "You are not authenticated."),
    ("GetTradeVolume", 6, "You are making information requests too rapidly."),
    ("GetTradeVolume", 7, "You are not authenticated."),
    ("WatchOrders", 1, "You specified an invalid asset pair."),
    ("WatchOrders", 1, "You are not watching the order book for the specified asset pair."),
    ("WatchOrders", 2, "You are already watching the order book for the specified asset pair."),
    ("WatchTicker", 1, "You specified an invalid asset pair."),
    ("WatchTicker", 1, "You are not watching the ticker for the specified asset pair."),
    ("WatchTicker", 2, "You are already watching the ticker for the specified asset pair."),
}
VARIES_METHODS = {
    "Authenticate", "GetBalances", "GetOrders", "EstimateMarketOrder", "PlaceOrder", "CancelOrder",
    "CancelAllOrders", "GetTradeVolume", "WatchOrders", "WatchTicker",
}


def _spec_rows() -> tuple[set[tuple[str, int, str]], set[str]]:
    rows: set[tuple[str, int, str]] = set()
    varies: set[str] = set()
    method = ""
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            method = line[2:].strip()
        m = re.match(r'^(\d)\s+\|\s+(.*)$', line)
        if m and method:
            text = m.group(2).strip()
            if text == "*(varies)*":
                varies.add(method)
            else:
                rows.add((method, int(m.group(1)), text.strip('"')))
    return rows, varies


@pytest.mark.skipif(not SPEC.exists(), reason="spec checkout not present")
def test_p10_row_table_matches_the_spec_file() -> None:
    rows, varies = _spec_rows()
    assert rows == SPEC_ROWS
    assert varies == VARIES_METHODS
    assert len(SPEC_ROWS) == 38 and len(VARIES_METHODS) == 10


# ---------------------------------------------------------------------------------------
# the scenarios: each returns (method, reply); the test compares with SPEC_ROWS


def _h(**kw: Any) -> Harness:
    return Harness(settings({1: {"GBP": "1000", "XBT": "1"}, 2: {"GBP": "1000", "XBT": "1"}}, **kw))


def _tight(**counts: int) -> LimitsSettings:
    def lim(name: str, default: RateLimitSettings) -> RateLimitSettings:
        n = counts.get(name)
        return default if n is None else RateLimitSettings(count=n, per=10.0, scope=default.scope)

    d = LimitsSettings()
    return LimitsSettings(orders=lim("orders", d.orders), info=lim("info", d.info), auth=lim("auth", d.auth))


def _signed_auth(s: Session, user_id: int, passphrase: str = "opensesame", cookie: str | None = None) -> Authenticate:
    nonce = auth.new_nonce()
    key = auth.derive_private_key(user_id, passphrase)
    sig = auth.sign(key, auth.signed_message(user_id, s.server_nonce, nonce))
    return Authenticate(
        user_id=user_id, cookie=cookie or "HGREqcILTz8blHa/jsUTVTNBJlg=", nonce=auth.b64_nonce(nonce), signature=sig
    )


def _bad(text: str, h: Harness, s: Session) -> ErrorReply:
    """Run a raw frame through the codec as the server does."""
    with pytest.raises(BadCommand) as ei:
        CODEC.decode_command(text)
    return h.ex.reply_to_bad_command(s, ei.value)


def _repeat(h: Harness, s: Session, cmd: Any, n: int) -> Any:
    r = None
    for _ in range(n):
        r = h.ex.handle(s, cmd)
    return r


def sc_auth_no_user(h: Harness) -> Any:
    s = h.session()
    return "Authenticate", h.ex.handle(s, _signed_auth(s, 99))


def sc_auth_rate(h: Harness) -> Any:
    h = _h(limits=_tight(auth=2))
    s = h.session()
    _repeat(h, s, _signed_auth(s, 1, passphrase="wrong"), 2)
    return "Authenticate", h.ex.handle(s, _signed_auth(s, 1))


def sc_auth_cookie(h: Harness) -> Any:
    s = h.session()
    return "Authenticate", h.ex.handle(s, _signed_auth(s, 1, cookie="AAAAqcILTz8blHa/jsUTVTNBJlg="))


def sc_auth_signature(h: Harness) -> Any:
    s = h.session()
    return "Authenticate", h.ex.handle(s, _signed_auth(s, 1, passphrase="open sesame"))


def _info_rate(method: str, cmd: Any) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        h = _h(limits=_tight(info=3))
        s = h.session(1)
        _repeat(h, s, GetBalances(), 3)
        return method, h.ex.handle(s, cmd)

    return sc


def _unauth(method: str, cmd: Any) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        return method, h.ex.handle(h.session(), cmd)

    return sc


def _orders_rate(method: str, cmd: Any) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        h = _h(limits=_tight(orders=2))
        s = h.session(1)
        _repeat(h, s, CancelOrder(id=12345), 2)
        return method, h.ex.handle(s, cmd)

    return sc


def _plain(method: str, cmd: Any, user: int | None = 1) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        return method, h.ex.handle(h.session(user), cmd)

    return sc


def _frame(method: str, text: str) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        return method, _bad(text, h, h.session(1))

    return sc


def sc_place_tonce_seq(h: Harness) -> Any:
    s = h.session(1)
    h.place(s, 1000, 100_000, tonce=5)
    return "PlaceOrder", h.ex.handle(s, PlaceOrder(tonce=5, base=XBT_C, counter=GBP_C, quantity=1000, price=100_000))


def sc_place_funds(h: Harness) -> Any:
    s = h.session(1)
    return "PlaceOrder", h.ex.handle(s, PlaceOrder(base=XBT_C, counter=GBP_C, quantity=-100_000_001, price=100_000))


def sc_place_too_many(h: Harness) -> Any:
    h = _h(max_open_orders=3)
    s = h.session(1)
    for _ in range(3):
        h.place(s, 1000, 100_000)
    return "PlaceOrder", h.ex.handle(s, PlaceOrder(base=XBT_C, counter=GBP_C, quantity=1000, price=100_000))


def sc_cancel_not_found(h: Harness) -> Any:
    s1, s2 = h.session(1), h.session(2)
    r = h.place(s1, 1000, 100_000)
    return "CancelOrder", h.ex.handle(s2, CancelOrder(id=r.id))  # type: ignore[attr-defined]


def _watch_twice(method: str, cls: Any) -> Callable[[Harness], Any]:
    def sc(h: Harness) -> Any:
        s = h.session()
        h.ex.handle(s, cls(base=XBT_C, counter=GBP_C, watch=True))
        return method, h.ex.handle(s, cls(base=XBT_C, counter=GBP_C, watch=True))

    return sc


PAIR = {"base": XBT_C, "counter": XBT_C}
BOOK = {"base": XBT_C, "counter": GBP_C}

SCENARIOS: list[Callable[[Harness], Any]] = [
    sc_auth_no_user,
    sc_auth_rate,
    sc_auth_cookie,
    sc_auth_signature,
    _info_rate("GetBalances", GetBalances()),
    _unauth("GetBalances", GetBalances()),
    _info_rate("GetOrders", GetOrders()),
    _unauth("GetOrders", GetOrders()),
    _plain("EstimateMarketOrder", EstimateMarketOrder(quantity=5, **PAIR), user=None),
    _orders_rate("EstimateMarketOrder", EstimateMarketOrder(quantity=5, **BOOK)),
    _plain("EstimateMarketOrder", EstimateMarketOrder(quantity=0, **BOOK), user=None),
    _plain("EstimateMarketOrder", EstimateMarketOrder(total=0, **BOOK), user=None),
    _frame("EstimateMarketOrder", '{"method":"EstimateMarketOrder","base":63488,"counter":64032}'),
    _plain("PlaceOrder", PlaceOrder(quantity=5, price=5, **PAIR)),
    sc_place_tonce_seq,
    sc_place_funds,
    sc_place_too_many,
    _orders_rate("PlaceOrder", PlaceOrder(quantity=5, price=5, **BOOK)),
    _unauth("PlaceOrder", PlaceOrder(quantity=5, price=5, **BOOK)),
    _plain("PlaceOrder", PlaceOrder(tonce=0, quantity=5, price=5, **BOOK)),
    _plain("PlaceOrder", PlaceOrder(quantity=5, price=0, **BOOK)),
    _plain("PlaceOrder", PlaceOrder(quantity=0, price=5, **BOOK)),
    _plain("PlaceOrder", PlaceOrder(quantity=2**62, price=4, **BOOK)),
    _frame("PlaceOrder", '{"method":"PlaceOrder","base":63488,"counter":64032,"price":100}'),
    sc_cancel_not_found,
    _orders_rate("CancelOrder", CancelOrder(id=1)),
    _unauth("CancelOrder", CancelOrder(id=1)),
    _frame("CancelOrder", '{"method":"CancelOrder"}'),
    _orders_rate("CancelAllOrders", CancelAllOrders()),
    _unauth("CancelAllOrders", CancelAllOrders()),
    _info_rate("GetTradeVolume", GetTradeVolume(asset=XBT_C)),
    _unauth("GetTradeVolume", GetTradeVolume(asset=XBT_C)),
    _plain("WatchOrders", WatchOrders(watch=True, **PAIR), user=None),
    _plain("WatchOrders", WatchOrders(watch=False, **BOOK), user=None),
    _watch_twice("WatchOrders", WatchOrders),
    _plain("WatchTicker", WatchTicker(watch=True, **PAIR), user=None),
    _plain("WatchTicker", WatchTicker(watch=False, **BOOK), user=None),
    _watch_twice("WatchTicker", WatchTicker),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[f"{i:02d}" for i in range(len(SCENARIOS))])
def test_p10_error_row(scenario: Callable[[Harness], Any]) -> None:
    h = _h()
    method, reply = scenario(h)
    assert isinstance(reply, ErrorReply), reply
    assert (method, reply.error_code, reply.error_msg) in SPEC_ROWS
    assert reply.tag is UNSET


def test_p10_every_documented_row_is_produced() -> None:
    produced = set()
    for sc in SCENARIOS:
        method, reply = sc(_h())
        produced.add((method, reply.error_code, reply.error_msg))
    assert produced == SPEC_ROWS
    assert len(produced) == 38


def test_p10_varies_rows_examples() -> None:
    """One example of each method's "(varies)" error 8 (our texts; see docs/EXCHANGE.md)."""
    h = _h()
    s = h.session(1)
    anon = h.session()
    got = {
        "Authenticate": h.ex.handle(s, _signed_auth(s, 1)),  # already authenticated
        "PlaceOrder": h.ex.handle(s, PlaceOrder(quantity=5, price=-5, **BOOK)),
        "GetTradeVolume": h.ex.handle(s, GetTradeVolume(asset=12345)),
    }
    bad_nonce = _signed_auth(anon, 1)
    got["Authenticate-nonce"] = h.ex.handle(
        anon,
        Authenticate(user_id=1, cookie=bad_nonce.cookie, nonce="c2hvcnQ=", signature=bad_nonce.signature),
    )
    assert {k: (r.error_code, r.error_msg) for k, r in got.items()} == {  # type: ignore[attr-defined]
        "Authenticate": (8, "You are already authenticated."),
        "Authenticate-nonce": (8, "Nonce must be 16 bytes, base64-encoded."),
        "PlaceOrder": (8, "Price must be positive."),
        "GetTradeVolume": (8, "You specified an invalid asset."),
    }
    # wrong types and unknown methods come from the codec, answered by reply_to_bad_command
    frames = {
        "Authenticate": '{"tag":7,"method":"Authenticate","user_id":"1","cookie":"","nonce":"","signature":["",""]}',
        "GetBalances": '{"tag":true,"method":"GetBalances"}',
        "GetOrders": '{"tag":1.5,"method":"GetOrders"}',
        "EstimateMarketOrder": '{"tag":7,"method":"EstimateMarketOrder","base":true,"counter":64032,"quantity":1}',
        "PlaceOrder": '{"tag":7,"method":"PlaceOrder","base":63488,"counter":64032,"quantity":1e400}',
        "CancelOrder": '{"tag":7,"method":"CancelOrder","id":"1"}',
        "CancelAllOrders": '{"tag":"7","method":"CancelAllOrders"}',
        "GetTradeVolume": '{"tag":7,"method":"GetTradeVolume","asset":1.5}',
        "WatchOrders": '{"tag":7,"method":"WatchOrders","base":63488,"counter":64032,"watch":1}',
        "WatchTicker": '{"tag":7,"method":"WatchTicker","base":63488,"counter":64032}',
    }
    assert set(frames) == VARIES_METHODS
    for method, text in frames.items():
        r = _bad(text, h, s)
        assert r.error_code == 8 and r.error_msg, method
        assert r.tag == (7 if '"tag":7' in text else UNSET), method
    r = _bad('{"tag":9,"method":"Frobnicate"}', h, s)
    assert (r.error_code, r.error_msg, r.tag) == (8, "Unknown method: Frobnicate.", 9)


def test_tag_echoed_iff_nonzero() -> None:
    h = _h()
    s = h.session(1)
    assert h.ex.handle(s, GetOrders(tag=42)).tag == 42
    assert h.ex.handle(s, GetOrders(tag=0)).tag is UNSET
    assert h.ex.handle(s, GetOrders()).tag is UNSET
    r = h.ex.handle(s, PlaceOrder(tag=-3, quantity=0, price=1, **BOOK))
    assert (r.tag, r.error_code) == (-3, 8)


# ---------------------------------------------------------------------------------------
# Authenticate: AUTH.md known answer (P1, server side) and forgeries (X4)


def test_p1_auth_md_example_is_accepted_verbatim() -> None:
    h = _h()
    s = h.ex.open_session(lambda n: None, server_nonce=auth.nonce_from_b64("azRzAi5rm1ry/l0drnz1vw=="))
    cmd = CODEC.decode_command(
        '{"method":"Authenticate","user_id":1,"cookie":"HGREqcILTz8blHa/jsUTVTNBJlg=",'
        '"nonce":"8IyYyvH9gujOqYJdv/BP0A==","signature":["P7d6nXtbKmggnnb2hyB4xXkTQNWYmFSto6tzXg==",'
        '"NLhDQS8YqRDxin1M4dNZeGDmNFsiv3iUz2d4Cg=="]}'
    )
    assert h.ex.handle(s, cmd) == AuthenticateReply()
    assert s.user_id == 1
    assert h.ex.handle(s, GetBalances()).error_code == 0


def test_x4_replayed_authenticate_fails_on_a_new_connection() -> None:
    h = _h()
    s1 = h.session()
    cmd = _signed_auth(s1, 1)
    assert h.ex.handle(s1, cmd) == AuthenticateReply()
    s2 = h.session()  # fresh server nonce
    assert h.ex.handle(s2, cmd).error_code == 7  # type: ignore[attr-defined]
    assert s2.user_id is None


def test_x4_forgeries_rejected() -> None:
    h = _h(limits=LimitsSettings(enabled=False))
    s = h.session()
    good = _signed_auth(s, 1)
    r_b64, s_b64 = good.signature
    import base64

    def flip(b64: str, bit: int) -> str:
        raw = bytearray(base64.b64decode(b64))
        raw[bit // 8] ^= 1 << (bit % 8)
        return base64.b64encode(bytes(raw)).decode()

    n_bytes = auth.CURVE.q.to_bytes(29, "big")
    forged = [
        (s_b64, r_b64),
        ("A" * 40, s_b64),
        (r_b64, base64.b64encode(bytes(28)).decode()),
        (r_b64, base64.b64encode(n_bytes[1:]).decode()),
        (r_b64[:-4], s_b64),
        ("!!!not base64!!!", s_b64),
    ] + [(flip(r_b64, b), s_b64) for b in range(0, 224, 7)] + [(r_b64, flip(s_b64, b)) for b in range(3, 224, 11)]
    for sig in forged:
        cmd = Authenticate(user_id=1, cookie=good.cookie, nonce=good.nonce, signature=sig)
        r = h.ex.handle(s, cmd)
        assert isinstance(r, ErrorReply) and r.error_code == 7, sig
    wrong_nonce = Authenticate(user_id=1, cookie=good.cookie, nonce=auth.b64_nonce(auth.new_nonce()), signature=good.signature)
    assert h.ex.handle(s, wrong_nonce).error_code == 7  # type: ignore[attr-defined]
    other_user = Authenticate(user_id=2, cookie=good.cookie, nonce=good.nonce, signature=good.signature)
    assert h.ex.handle(s, other_user).error_code == 7  # type: ignore[attr-defined]
    assert s.user_id is None
    assert h.ex.handle(s, good) == AuthenticateReply()


def test_user_without_credentials_cannot_log_in_but_trades_internally() -> None:
    from engine.exchange.settings import ExchangeSettings, UserSettings

    st = ExchangeSettings(users=[UserSettings(user_id=5, balances={"GBP": "10"})])
    h = Harness(st)
    s = h.session()
    assert h.ex.handle(s, _signed_auth(s, 5)) == ErrorReply(error_code=1, error_msg="There is no such user.")
    assert isinstance(h.place(h.session(5), 1000, 100_000), PlaceOrderReply)


def test_second_authenticate_is_refused_and_keeps_the_first_user() -> None:
    h = _h()
    s = h.session()
    assert h.ex.handle(s, _signed_auth(s, 1)) == AuthenticateReply()
    r = h.ex.handle(s, _signed_auth(s, 2))
    assert r == ErrorReply(error_code=8, error_msg="You are already authenticated.")
    assert s.user_id == 1


# ---------------------------------------------------------------------------------------
# rate limits (error 6): window default, per user / per session, recovery in time, bucket


def test_orders_limit_is_per_user_and_recovers() -> None:
    h = _h(limits=_tight(orders=2))
    a1, a2 = h.session(1), h.session(1)
    b = h.session(2)
    assert h.ex.handle(a1, CancelOrder(id=1)).error_code == 1  # type: ignore[attr-defined]
    assert h.ex.handle(a2, EstimateMarketOrder(quantity=5, **BOOK)).error_code == 0
    assert h.ex.handle(a2, CancelOrder(id=1)).error_code == 6  # type: ignore[attr-defined]
    assert h.ex.handle(b, CancelOrder(id=1)).error_code == 1  # type: ignore[attr-defined]
    h.clock.advance(9.999)
    assert h.ex.handle(a1, CancelOrder(id=1)).error_code == 6  # type: ignore[attr-defined]
    h.clock.advance(0.001)
    assert h.ex.handle(a1, CancelOrder(id=1)).error_code == 1  # type: ignore[attr-defined]


def test_info_limit_is_per_session() -> None:
    h = _h(limits=_tight(info=1))
    a1, a2 = h.session(1), h.session(1)
    assert h.ex.handle(a1, GetOrders()).error_code == 0
    assert h.ex.handle(a1, GetOrders()).error_code == 6
    assert h.ex.handle(a2, GetOrders()).error_code == 0


def test_bucket_algorithm_and_disabled_limits() -> None:
    lim = LimitsSettings(algorithm="bucket", orders=RateLimitSettings(count=2, per=10.0))
    h = _h(limits=lim)
    s = h.session(1)
    codes = [h.ex.handle(s, CancelOrder(id=1)).error_code for _ in range(3)]  # type: ignore[attr-defined]
    assert codes == [1, 1, 6]
    h.clock.advance(5.0)  # one token refilled
    assert h.ex.handle(s, CancelOrder(id=1)).error_code == 1  # type: ignore[attr-defined]
    h2 = _h(limits=LimitsSettings(enabled=False))
    s2 = h2.session(1)
    assert all(h2.ex.handle(s2, GetOrders()).error_code == 0 for _ in range(100))


# ---------------------------------------------------------------------------------------
# F3 tonce edges


def test_f3_tonce_edges() -> None:
    h = _h()
    a, a2, b = h.session(1), h.session(1), h.session(2)

    def place(s: Session, tonce: int, q: int = 1000) -> int:
        r = h.ex.handle(s, PlaceOrder(tonce=tonce, quantity=q, price=100_000, **BOOK))
        return r.error_code

    assert place(a, -1) == 3  # nothing below or at the reset counter (0)
    assert place(a, 10) == 0
    assert place(a2, 10) == 3  # resubmission, even from another session of the same user
    assert place(a2, 9) == 3
    assert place(b, 10) == 0  # users are independent
    assert place(a, 11, q=10**12) == 4  # a failed PlaceOrder does not consume its tonce
    assert place(a, 11) == 0
    # a market order's tonce counts too
    r = h.ex.handle(a, PlaceOrder(tonce=20, quantity=-1000, **BOOK))
    assert isinstance(r, PlaceOrderReply)
    assert place(a, 15) == 3
    # cancel by tonce of a filled or unknown tonce: not found
    assert h.ex.handle(a, CancelOrder(tonce=20)).error_code == 1  # type: ignore[attr-defined]
    # CancelAllOrders resets the counter for every session of the user (and only that user)
    assert h.ex.handle(a2, CancelAllOrders()).error_code == 0
    assert h.ex.tonce_high_water(1) == 0
    assert place(a, 1) == 0
    assert place(b, 10) == 3
    assert place(a, 2**63 - 1) == 0
    assert place(a, 2**63 - 1) == 3


def test_market_order_remaining_and_estimate_without_auth() -> None:
    h = _h()
    anon = h.session()
    s = h.session(2)
    h.place(s, -10_000_000, 100_000)  # 0.1 XBT @ 1000.00
    h.place(s, -10_000_000, 110_000)
    r = h.ex.handle(anon, EstimateMarketOrder(quantity=15_000_000, **BOOK))
    assert (r.quantity, r.total) == (15_000_000, 10_000 + 5_500)  # type: ignore[attr-defined]
    r = h.ex.handle(anon, EstimateMarketOrder(total=12_750, **BOOK))
    assert (r.quantity, r.total) == (12_500_000, 12_750)  # type: ignore[attr-defined]
    r = h.ex.handle(anon, EstimateMarketOrder(quantity=-5, **BOOK))
    assert (r.quantity, r.total) == (0, 0)  # type: ignore[attr-defined]
    assert h.ex.handle(anon, EstimateMarketOrder(quantity=5, base=XBT_C, counter=EUR_C)).error_code == 0


# ---------------------------------------------------------------------------------------
# X5 isolation


def test_x5_isolation() -> None:
    h = _h()
    a, b, watcher_b = h.session(1), h.session(2), h.session(2)
    h.ex.handle(watcher_b, WatchOrders(watch=True, **BOOK))
    r = h.place(a, 1_000_000, 100_000, tonce=77)
    assert isinstance(r, PlaceOrderReply)
    # another user's order looks exactly like a missing one
    assert h.ex.handle(b, CancelOrder(id=r.id)) == h.ex.handle(b, CancelOrder(id=10**9))  # type: ignore[arg-type]
    assert h.ex.handle(b, CancelOrder(tonce=77)).error_code == 1  # type: ignore[attr-defined]
    assert h.ex.handle(b, GetOrders()).orders == []  # type: ignore[attr-defined]
    assert h.ex.handle(b, CancelAllOrders()).orders == []  # type: ignore[attr-defined]
    assert h.ex.open_orders(1)[0].id == r.id
    seen = h.notices(watcher_b) + h.notices(b)
    opened = [n for n in seen if isinstance(n, OrderOpened)]
    assert opened and all(n.tonce is UNSET for n in opened)
    assert not [n for n in seen if type(n).__name__ in ("BalanceChanged", "TradeVolumeChanged")]
    h.place(b, -500_000, 100_000, tonce=3)
    seen = h.notices(watcher_b)
    m = [n for n in seen if isinstance(n, OrdersMatched)]
    assert m and all(n.bid_tonce is UNSET and n.bid_counter_fee is UNSET and n.ask_tonce == 3 for n in m)
    own_a = [n for n in h.notices(a) if isinstance(n, OrdersMatched)]
    assert own_a and all(n.ask_tonce is UNSET and n.ask_counter_fee is UNSET and n.bid_tonce == 77 for n in own_a)


def test_x5_ten_thousand_cross_user_probes() -> None:
    import random

    h = _h(limits=LimitsSettings(enabled=False))
    owner, prober = h.session(1), h.session(2)
    ids = [h.place(owner, 10_000, 100_000 + i, tonce=i + 1).id for i in range(50)]  # type: ignore[attr-defined]
    before = (h.ex.open_orders(1), h.ex.balances(1), h.ex.state_hash())
    h.notices(owner)
    not_found = ErrorReply(error_code=1, error_msg="The specified order was not found.")
    rng = random.Random(4)
    for i in range(10_000):
        cmd = CancelOrder(id=rng.choice(ids)) if i % 2 else CancelOrder(tonce=rng.randrange(1, 52))
        assert h.ex.handle(prober, cmd) == not_found
    assert h.ex.handle(prober, GetOrders()).orders == []  # type: ignore[attr-defined]
    assert h.notices(owner) == [] and h.notices(prober) == []
    assert (h.ex.open_orders(1), h.ex.balances(1), h.ex.state_hash()) == before  # nothing changed


def test_cancel_reply_fields() -> None:
    h = _h()
    s = h.session(1)
    r = h.place(s, -1234, 100_001, tonce=4)
    c = h.ex.handle(s, CancelOrder(tonce=4, tag=5))
    assert c == CancelOrderReply(
        tag=5, id=r.id, tonce=4, base=XBT_C, counter=GBP_C, quantity=-1234, price=100_001, time=h.clock.now  # type: ignore[attr-defined]
    )


def test_internal_session_for_unknown_user_is_a_config_error() -> None:
    from engine.errors import ConfigError

    h = _h()
    with pytest.raises(ConfigError, match="user 99"):
        h.ex.open_internal_session(99)
    assert isinstance(h.ex, Exchange)
