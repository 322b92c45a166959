"""The codec: a golden table of (message, exact wire text) for every message type in both
directions, round trips, the field-combination rules, and a malformed-input corpus (B1-B3, P8)."""

from __future__ import annotations

import pytest

from engine.errors import ExchangeError, LocalProtocolError, RemoteProtocolError, TonceOutOfSequence
from engine.protocol.codec import CODEC, BadCommand, Codec, ReplyFrame, UnknownNotice
from engine.protocol.messages import (
    COMMANDS,
    NOTICES,
    REPLY_FOR,
    UNSET,
    Authenticate,
    Balance,
    BalanceChanged,
    BookOrder,
    CancelAllOrders,
    CancelAllOrdersReply,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    EstimateMarketOrder,
    EstimateMarketOrderReply,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    GetOrdersReply,
    GetTradeVolume,
    GetTradeVolumeReply,
    OpenOrder,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    TickerChanged,
    TradeVolumeChanged,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
    Welcome,
)

X, G = 63488, 64032

COMMAND_GOLDEN = [
    (
        Authenticate(
            tag=1,
            user_id=1,
            cookie="HGREqcILTz8blHa/jsUTVTNBJlg=",
            nonce="8IyYyvH9gujOqYJdv/BP0A==",
            signature=("P7d6nXtbKmggnnb2hyB4xXkTQNWYmFSto6tzXg==", "NLhDQS8YqRDxin1M4dNZeGDmNFsiv3iUz2d4Cg=="),
        ),
        '{"method":"Authenticate","tag":1,"user_id":1,"cookie":"HGREqcILTz8blHa/jsUTVTNBJlg=",'
        '"nonce":"8IyYyvH9gujOqYJdv/BP0A==","signature":["P7d6nXtbKmggnnb2hyB4xXkTQNWYmFSto6tzXg==",'
        '"NLhDQS8YqRDxin1M4dNZeGDmNFsiv3iUz2d4Cg=="]}',
    ),
    (GetBalances(tag=2), '{"method":"GetBalances","tag":2}'),
    (GetBalances(), '{"method":"GetBalances"}'),
    (GetOrders(tag=3), '{"method":"GetOrders","tag":3}'),
    (
        EstimateMarketOrder(tag=4, base=X, counter=G, quantity=-150000000),
        '{"method":"EstimateMarketOrder","tag":4,"base":63488,"counter":64032,"quantity":-150000000}',
    ),
    (
        EstimateMarketOrder(base=X, counter=G, total=2000),
        '{"method":"EstimateMarketOrder","base":63488,"counter":64032,"total":2000}',
    ),
    (
        PlaceOrder(tag=5, tonce=42, base=X, counter=G, quantity=100000000, price=54321, persist=False),
        '{"method":"PlaceOrder","tag":5,"tonce":42,"base":63488,"counter":64032,"quantity":100000000,'
        '"price":54321,"persist":false}',
    ),
    (
        PlaceOrder(base=X, counter=G, quantity=-5),
        '{"method":"PlaceOrder","base":63488,"counter":64032,"quantity":-5}',
    ),
    (
        PlaceOrder(tag=6, base=X, counter=G, total=2000),
        '{"method":"PlaceOrder","tag":6,"base":63488,"counter":64032,"total":2000}',
    ),
    (CancelOrder(tag=7, id=99), '{"method":"CancelOrder","tag":7,"id":99}'),
    (CancelOrder(tonce=42), '{"method":"CancelOrder","tonce":42}'),
    (CancelAllOrders(tag=8), '{"method":"CancelAllOrders","tag":8}'),
    (GetTradeVolume(tag=9, asset=X), '{"method":"GetTradeVolume","tag":9,"asset":63488}'),
    (
        WatchOrders(tag=10, base=X, counter=G, watch=True),
        '{"method":"WatchOrders","tag":10,"base":63488,"counter":64032,"watch":true}',
    ),
    (
        WatchTicker(base=X, counter=G, watch=False),
        '{"method":"WatchTicker","base":63488,"counter":64032,"watch":false}',
    ),
]

_OO = OpenOrder(id=5, tonce=None, base=X, counter=G, quantity=-100, price=54321, time=1700000000000000)
REPLY_GOLDEN = [
    (ErrorReply(tag=1, error_code=3, error_msg="Tonce is out of sequence."),
     '{"tag":1,"error_code":3,"error_msg":"Tonce is out of sequence."}'),
    (PlaceOrderReply(tag=2, id=5, time=1700000000000000), '{"tag":2,"error_code":0,"id":5,"time":1700000000000000}'),
    (PlaceOrderReply(remaining=0), '{"error_code":0,"remaining":0}'),
    (GetBalancesReply(tag=3, balances=[Balance(asset=X, balance=5), Balance(asset=G, balance=0)]),
     '{"tag":3,"error_code":0,"balances":[{"asset":63488,"balance":5},{"asset":64032,"balance":0}]}'),
    (GetOrdersReply(orders=[_OO]),
     '{"error_code":0,"orders":[{"id":5,"tonce":null,"base":63488,"counter":64032,"quantity":-100,'
     '"price":54321,"time":1700000000000000}]}'),
    (EstimateMarketOrderReply(tag=4, quantity=10, total=20), '{"tag":4,"error_code":0,"quantity":10,"total":20}'),
    (CancelOrderReply(id=5, tonce=7, base=X, counter=G, quantity=3, price=4, time=6),
     '{"error_code":0,"id":5,"tonce":7,"base":63488,"counter":64032,"quantity":3,"price":4,"time":6}'),
    (CancelAllOrdersReply(orders=[]), '{"error_code":0,"orders":[]}'),
    (GetTradeVolumeReply(volume=123), '{"error_code":0,"volume":123}'),
    (WatchOrdersReply(orders=[BookOrder(id=1, quantity=2, price=3, time=4)]),
     '{"error_code":0,"orders":[{"id":1,"quantity":2,"price":3,"time":4}]}'),
    (WatchOrdersReply(tag=9), '{"tag":9,"error_code":0}'),
    (WatchTickerReply(last=None, bid=100, ask=None, low=None, high=None, volume=0),
     '{"error_code":0,"last":null,"bid":100,"ask":null,"low":null,"high":null,"volume":0}'),
]

NOTICE_GOLDEN = [
    (Welcome(nonce="azRzAi5rm1ry/l0drnz1vw=="), '{"notice":"Welcome","nonce":"azRzAi5rm1ry/l0drnz1vw=="}'),
    (BalanceChanged(asset=G, balance=987654), '{"notice":"BalanceChanged","asset":64032,"balance":987654}'),
    (OrderOpened(id=1, base=X, counter=G, quantity=5, price=6, time=7),
     '{"notice":"OrderOpened","id":1,"base":63488,"counter":64032,"quantity":5,"price":6,"time":7}'),
    (OrderOpened(id=1, tonce=None, base=X, counter=G, quantity=5, price=6, time=7),
     '{"notice":"OrderOpened","id":1,"tonce":null,"base":63488,"counter":64032,"quantity":5,"price":6,"time":7}'),
    (OrdersMatched(bid=1, ask=2, base=X, counter=G, quantity=3, price=4, total=5, bid_rem=6, ask_rem=7, time=8),
     '{"notice":"OrdersMatched","bid":1,"ask":2,"base":63488,"counter":64032,"quantity":3,"price":4,'
     '"total":5,"bid_rem":6,"ask_rem":7,"time":8}'),
    (OrdersMatched(bid_tonce=None, ask=2, ask_tonce=9, base=X, counter=G, quantity=3, price=4, total=5,
                   ask_rem=0, time=8, bid_base_fee=0, bid_counter_fee=1),
     '{"notice":"OrdersMatched","bid_tonce":null,"ask":2,"ask_tonce":9,"base":63488,"counter":64032,'
     '"quantity":3,"price":4,"total":5,"ask_rem":0,"time":8,"bid_base_fee":0,"bid_counter_fee":1}'),
    (OrderClosed(id=1, tonce=5, base=X, counter=G, quantity=0, price=6),
     '{"notice":"OrderClosed","id":1,"tonce":5,"base":63488,"counter":64032,"quantity":0,"price":6}'),
    (TickerChanged(base=X, counter=G, bid=None, volume=10),
     '{"notice":"TickerChanged","base":63488,"counter":64032,"bid":null,"volume":10}'),
    (TradeVolumeChanged(asset=X, volume=3), '{"notice":"TradeVolumeChanged","asset":63488,"volume":3}'),
]


def test_golden_tables_cover_every_message_type():
    assert {type(m) for m, _ in COMMAND_GOLDEN} == set(COMMANDS)
    assert {type(m) for m, _ in NOTICE_GOLDEN} == set(NOTICES)
    assert {type(m) for m, _ in REPLY_GOLDEN} >= set(REPLY_FOR.values()) - {REPLY_FOR[Authenticate]}


@pytest.mark.parametrize("msg, text", COMMAND_GOLDEN, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_p10_commands_exact_text_and_round_trip(msg, text):
    assert CODEC.encode_text(msg) == text
    assert CODEC.decode_command(text) == msg


@pytest.mark.parametrize("msg, text", REPLY_GOLDEN, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_p10_replies_exact_text_and_round_trip(msg, text):
    assert CODEC.encode_text(msg) == text
    frame = CODEC.decode_server_frame(text)
    assert isinstance(frame, ReplyFrame)
    assert frame.tag == (None if msg.tag is UNSET else msg.tag)
    assert CODEC.decode_reply(frame, type(msg) if not isinstance(msg, ErrorReply) else PlaceOrderReply) == msg


@pytest.mark.parametrize("msg, text", NOTICE_GOLDEN, ids=lambda v: type(v).__name__ if not isinstance(v, str) else "")
def test_p10_notices_exact_text_and_round_trip(msg, text):
    assert CODEC.encode_text(msg) == text
    assert CODEC.decode_server_frame(text) == msg
    assert CODEC.decode_notice(text.encode()) == msg


def test_authenticate_reply_is_empty_success():
    assert CODEC.decode_reply('{"tag":4,"error_code":0}', REPLY_FOR[Authenticate]).tag == 4


def test_p8_absent_versus_null():
    foreign = CODEC.decode_notice('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":3,"price":4,"time":5}')
    own = CODEC.decode_notice('{"notice":"OrderOpened","id":1,"tonce":null,"base":1,"counter":2,"quantity":3,"price":4,"time":5}')
    assert isinstance(foreign, OrderOpened) and isinstance(own, OrderOpened)
    assert not foreign.own and foreign.tonce is UNSET
    assert own.own and own.tonce is None
    t = CODEC.decode_notice('{"notice":"TickerChanged","base":1,"counter":2,"bid":null}')
    assert isinstance(t, TickerChanged)
    assert t.bid is None and t.ask is UNSET and t.last is UNSET
    m = CODEC.decode_notice('{"notice":"OrdersMatched","bid":1,"bid_tonce":7,"base":1,"counter":2,"quantity":3,"price":4,"total":5,"bid_rem":0,"time":6}')
    assert isinstance(m, OrdersMatched) and m.own_bid and not m.own_ask and m.ask is UNSET


# -- combination rules (spec tables), both when building and when decoding -------------------

PLACE_COMBOS = [
    # (quantity, price, total, valid)
    (1, 1, None, True),
    (1, None, None, True),
    (None, None, 1, True),
    (None, 1, None, False),
    (1, None, 1, False),
    (None, 1, 1, False),
    (1, 1, 1, False),
    (None, None, None, False),
]


@pytest.mark.parametrize("q, p, t, valid", PLACE_COMBOS)
def test_place_order_table(q, p, t, valid):
    kw = {k: v for k, v in (("quantity", q), ("price", p), ("total", t)) if v is not None}
    text = '{"method":"PlaceOrder","tag":3,"base":1,"counter":2' + "".join(f',"{k}":{v}' for k, v in kw.items()) + "}"
    if valid:
        PlaceOrder(base=1, counter=2, **kw)
        assert isinstance(CODEC.decode_command(text), PlaceOrder)
    else:
        with pytest.raises(LocalProtocolError, match="either quantity or total"):
            PlaceOrder(base=1, counter=2, **kw)
        with pytest.raises(BadCommand) as ei:
            CODEC.decode_command(text)
        assert ei.value.error_msg == "You must specify either quantity or total for a market order."
        assert ei.value.tag == 3


def test_cancel_and_estimate_tables():
    for bad in ({}, {"id": 1, "tonce": 2}):
        with pytest.raises(LocalProtocolError, match="either order ID or tonce"):
            CancelOrder(**bad)
    with pytest.raises(BadCommand, match="You must specify either order ID or tonce."):
        CODEC.decode_command('{"method":"CancelOrder"}')
    for bad in ({}, {"quantity": 1, "total": 2}):
        with pytest.raises(LocalProtocolError, match="either quantity or total"):
            EstimateMarketOrder(base=1, counter=2, **bad)


# -- bad input from the peer (B1-B3): one protocol error type, naming field and value -------

MALFORMED_NOTICES = [
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":3,"price":4', "malformed"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":NaN,"price":4,"time":5}', "malformed"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":Infinity,"price":4,"time":5}', "malformed"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":1e400,"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":1.5,"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":true,"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":"3","price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":9223372036854775808,"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"quantity":' + "9" * 5000 + ',"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":1,"base":1,"counter":2,"price":4,"time":5}', "quantity"),
    ('{"notice":"OrderOpened","id":null,"base":1,"counter":2,"quantity":1,"price":4,"time":5}', "id"),
    ('{"notice":"BalanceChanged","asset":1,"balance":2,"x":' + "[" * 100000 + "]" * 100000 + "}", "nesting"),
    ("[1,2,3]", "object"),
    ('"hello"', "object"),
    ("", "malformed"),
    ('{"notice":"Welcome","nonce":"\\ud800"}', "malformed"),
    ('{"notice":42}', "notice"),
    ('{"error_code":1}', "error_msg"),
    ('{"error_code":1.0,"error_msg":"x"}', "error_code"),
    ('{"tag":1}', "error_code"),
]


@pytest.mark.parametrize("text, where", MALFORMED_NOTICES)
def test_b1_b3_malformed_frames_raise_one_error_type(text, where):
    with pytest.raises(RemoteProtocolError) as ei:
        CODEC.decode_server_frame(text)
    assert where in (str(ei.value) + str(ei.value.field)).lower()


def test_b1_invalid_utf8_and_size_limit():
    with pytest.raises(RemoteProtocolError):
        CODEC.decode_server_frame(b'{"notice":"Welcome","nonce":"\xff"}')
    small = Codec(max_frame=64)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        small.decode_server_frame('{"notice":"Welcome","nonce":"' + "a" * 100 + '"}')


def test_b2_unknown_notice_is_its_own_subclass():
    with pytest.raises(UnknownNotice) as ei:
        CODEC.decode_server_frame('{"notice":"Foo","x":1}')
    assert ei.value.name == "Foo"
    assert isinstance(ei.value, RemoteProtocolError)


def test_b2_extra_fields_ignored():
    n = CODEC.decode_notice('{"notice":"BalanceChanged","asset":1,"balance":2,"new_field":[1,{"a":2}]}')
    assert n == BalanceChanged(asset=1, balance=2)


def test_reply_decoded_as_wrong_type_is_a_protocol_error():
    with pytest.raises(RemoteProtocolError, match="PlaceOrderReply"):
        CODEC.decode_reply('{"tag":1,"error_code":0,"id":"x"}', PlaceOrderReply)


@pytest.mark.parametrize(
    "text, tag, fragment",
    [
        ("{}", None, "You must specify a method."),
        ('{"tag":7}', 7, "You must specify a method."),
        ('{"tag":0}', None, "You must specify a method."),
        ('{"method":"Launch","tag":8}', 8, "Unknown method: Launch."),
        ('{"method":"GetBalances","tag":1.5}', None, "tag"),
        ('{"method":"PlaceOrder","tag":9,"base":1,"counter":2,"quantity":1,"price":true}', 9, "price"),
        ('{"method":"PlaceOrder","tag":9,"base":1,"counter":2,"quantity":1,"price":"5"}', 9, "price"),
        ('{"method":"PlaceOrder","tag":9,"base":1,"counter":2,"quantity":1,"price":5,"persist":1}', 9, "persist"),
        ('{"method":"PlaceOrder","tag":9,"base":1,"counter":2,"quantity":1e3,"price":5}', 9, "quantity"),
        ('{"method":"PlaceOrder","tag":9,"base":1,"counter":2,"quantity":1,"price":5,"tonce":null}', 9, "tonce"),
        ('{"method":"Authenticate","tag":2,"user_id":1,"cookie":"c","nonce":"n","signature":["a"]}', 2, "signature"),
        ('{"method":"GetBalances"', None, "Malformed JSON"),
        ('{"method":"GetBalances","x":' + "[" * 50000 + "]" * 50000 + "}", None, "nesting"),
        ("null", None, "object"),
    ],
)
def test_server_role_bad_commands(text, tag, fragment):
    with pytest.raises(BadCommand) as ei:
        CODEC.decode_command(text)
    assert ei.value.tag == tag
    assert ei.value.error_code == 8
    assert fragment in ei.value.error_msg


def test_local_protocol_error_on_unencodable():
    with pytest.raises(LocalProtocolError):
        CODEC.encode(GetBalances(tag=2**70))  # type: ignore[arg-type]


def test_error_reply_maps_to_exception_tree():
    reply = CODEC.decode_reply('{"tag":1,"error_code":3,"error_msg":"Tonce is out of sequence."}', PlaceOrderReply)
    assert isinstance(reply, ErrorReply)
    exc = ExchangeError.from_reply(reply.error_code, reply.error_msg)
    assert isinstance(exc, TonceOutOfSequence)
    assert (exc.error_code, exc.error_msg) == (3, "Tonce is out of sequence.")
    assert type(ExchangeError.from_reply(99, "new")) is ExchangeError


def test_authenticate_repr_hides_cookie():
    a = COMMAND_GOLDEN[0][0]
    assert "HGREq" not in repr(a) and "P7d6" not in repr(a)


@pytest.mark.parametrize(
    "msg, field",
    [
        (PlaceOrder(base=X, counter=G, quantity=1.5, price=3), "$.quantity"),  # type: ignore[arg-type]
        (PlaceOrder(base=X, counter=G, quantity=True, price=3), "$.quantity"),  # type: ignore[arg-type]
        (PlaceOrder(base=X, counter=G, quantity="1", price=3), "$.quantity"),  # type: ignore[arg-type]
        (PlaceOrder(base=X, counter=G, quantity=2**63, price=3), "$.quantity"),
        (CancelOrder(id=None), "$.id"),  # type: ignore[arg-type]
    ],
)
def test_b3_client_never_sends_invalid_numbers(msg, field):
    with pytest.raises(LocalProtocolError) as ei:
        CODEC.encode(msg)
    assert ei.value.field == field


def test_outgoing_validation_of_notices_is_opt_in():
    strict = Codec(validate_outgoing=True)
    bad = BalanceChanged(asset=1, balance=0.5)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="BalanceChanged") as ei:
        strict.encode(bad)
    assert ei.value.field == "$.balance"
    assert CODEC.encode(bad) == b'{"notice":"BalanceChanged","asset":1,"balance":0.5}'  # not checked by default


@pytest.mark.parametrize("as_bytes", [False, True])
def test_command_nesting_limit_does_not_depend_on_the_interpreter(as_bytes):
    # CPython 3.11 stops msgspec at ~1,000 levels, 3.12+ at ~10,000: the exchange's own
    # limit (MAX_COMMAND_NESTING) decides instead, the same on every version.
    from engine.protocol.codec import MAX_COMMAND_NESTING, json_nesting

    def frame(depth: int, extra: str = "") -> str:
        inner = depth - 1  # the command object itself is one level
        return '{"method":"GetBalances","tag":3,' + extra + '"x":' + "[" * inner + "]" * inner + "}"

    conv = (lambda t: t.encode()) if as_bytes else (lambda t: t)
    assert CODEC.decode_command(conv(frame(MAX_COMMAND_NESTING))) == GetBalances(tag=3)
    for depth in (MAX_COMMAND_NESTING + 1, 5000):
        with pytest.raises(BadCommand, match="JSON nesting too deep"):
            CODEC.decode_command(conv(frame(depth)))
    # Brackets inside strings do not nest, and many shallow values are fine.
    quoted = '"s":"' + "[{" * 100 + '\\"[",'
    assert CODEC.decode_command(conv(frame(2, quoted))) == GetBalances(tag=3)
    siblings = '"y":[' + ",".join(["[]"] * 200) + "],"
    assert CODEC.decode_command(conv(frame(2, siblings))) == GetBalances(tag=3)
    assert json_nesting(frame(7, quoted + siblings)) == 7
