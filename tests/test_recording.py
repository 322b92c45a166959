"""Recordings (issue 6 item 1): the cftrade-rec/1 format, its numpy twin, validation, capture.

Files are written here the way a third party would (plain JSON per line) as well as with the
project's writer; every validation rule is pinned to the line number it must report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import trio
import trio.testing

from backtests.record_cli import RecordOptions, record
from backtests.record_cli import main as record_main
from backtests.recording import (
    LT_BOOK,
    LT_GAP,
    LT_NOTICE,
    LT_OWN,
    LT_SNAPSHOT,
    LT_TICKER,
    Gap,
    Header,
    RecordingWriter,
    convert,
    load,
    read_jsonl,
    read_npz,
    replay_book,
    save_npz,
    validate,
    write_jsonl,
)
from engine.client.notices import FeedGap, ReplyEvent, SessionEnded, SessionStarted
from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.protocol.messages import (
    BalanceChanged,
    BookOrder,
    GetOrders,
    GetOrdersReply,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    TickerChanged,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
)
from engine.scale import XBT_EUR, XBT_GBP

B, C = XBT_GBP.codes
EXCHANGE_YAML = Path(__file__).resolve().parents[1] / "configs" / "exchange.yaml"
T0 = 1_700_000_000_000_000
HEADER = {"format": "cftrade-rec/1", "api_version": 2, "markets": ["XBT:GBP"], "source": "test",
          "user_id": None, "created_us": T0}


def _obj(msg: Any) -> Any:
    return msgspec.to_builtins(msg)


def opened(oid: int, q: int, p: int, t: int = T0, **kw: Any) -> dict[str, Any]:
    return _obj(OrderOpened(id=oid, base=B, counter=C, quantity=q, price=p, time=t, **kw))


def closed(oid: int, q: int, p: int, **kw: Any) -> dict[str, Any]:
    return _obj(OrderClosed(id=oid, base=B, counter=C, quantity=q, price=p, **kw))


def matched(q: int, p: int, t: int = T0, **kw: Any) -> dict[str, Any]:
    return _obj(OrdersMatched(base=B, counter=C, quantity=q, price=p, total=q * p // 10**8, time=t, **kw))


def snap(*orders: tuple[int, int, int]) -> dict[str, Any]:
    return _obj(WatchOrdersReply(tag=1, orders=[BookOrder(id=i, quantity=q, price=p, time=T0 - 10) for i, q, p in orders]))


BOOK = ((1, 100, 3000000), (2, 50, 2999900), (3, -70, 3000100), (4, -20, 3000200))


def write(tmp_path: Path, body: list[dict[str, Any] | str], header: dict[str, Any] | None = None,
          name: str = "rec.jsonl") -> Path:
    """Write a recording line by line as plain JSON (strings are written verbatim)."""
    p = tmp_path / name
    out = [json.dumps(header or HEADER)]
    out += [b if isinstance(b, str) else json.dumps(b) for b in body]
    p.write_text("\n".join(out) + "\n")
    return p


def lines(*messages: dict[str, Any], t: int = T0 + 1000, snapshot: dict[str, Any] | None = None
          ) -> list[dict[str, Any] | str]:
    """A snapshot line then one notice per line, 1 ms apart."""
    body: list[dict[str, Any] | str] = [
        {"t": t, "market": "XBT:GBP", "reply": "WatchOrders", "m": snapshot or snap(*BOOK)}]
    body += [{"t": t + 1000 * (i + 1), "m": m} for i, m in enumerate(messages)]
    return body


def problems(tmp_path: Path, body: list[dict[str, Any] | str], header: dict[str, Any] | None = None
             ) -> list[tuple[int, str]]:
    report = validate(read_jsonl(write(tmp_path, body, header)))
    return [(p.line, p.message) for p in report.problems]


# ---------------------------------------------------------------------------------------
# Validation: one test per rule, each pinned to its line


def test_valid_recording_has_no_problems_and_counts(tmp_path):
    body = lines(opened(10, 5, 2999950), matched(30, 3000100, bid=11, bid_rem=0, ask=3, ask_rem=40),
                 closed(11, 0, 3000100), closed(1, 100, 3000000),
                 {"notice": "TickerChanged", "base": B, "counter": C, "bid": 2999950})
    report = validate(read_jsonl(write(tmp_path, body)))
    assert report.ok, report.problems
    assert report.counts == {"snapshots": 1, "OrderOpened": 1, "OrdersMatched": 1, "OrderClosed": 2,
                             "other_notices": 1}
    assert report.takers == 1  # order 11 crossed on arrival, never rested
    assert report.first_t == T0 + 1000 and report.last_t == T0 + 6000


def test_receive_time_going_backwards_names_the_line(tmp_path):
    body = lines(opened(10, 5, 2999950), opened(11, 5, 2999950))
    body[2] = {"t": T0, "m": opened(11, 5, 2999950)}  # line 4, earlier than line 3
    assert problems(tmp_path, body) == [(4, f"receive time went backwards: {T0} after {T0 + 2000} on line 3")]


def test_exchange_time_going_backwards_within_a_market(tmp_path):
    body = lines(opened(10, 5, 2999950, t=T0 + 50), opened(11, 5, 2999950, t=T0 + 40))
    assert problems(tmp_path, body) == [(4, f"exchange time went backwards: {T0 + 40} after {T0 + 50}")]


def test_opened_id_must_be_new(tmp_path):
    assert problems(tmp_path, lines(opened(2, 5, 2999950))) == [
        (3, "OrderOpened 2: the id is not new (seen on line 2)")]
    assert problems(tmp_path, lines(opened(10, 5, 2999950), closed(10, 5, 2999950), opened(10, 5, 2999950))) == [
        (5, "OrderOpened 10: the id is not new (seen on line 3)")]


def test_opened_needs_quantity_and_positive_price(tmp_path):
    assert problems(tmp_path, lines(opened(10, 0, 2999950))) == [
        (3, "OrderOpened 10 with quantity 0 and price 2999950 (need quantity != 0, price > 0)")]


def test_unknown_close_is_an_error_when_the_snapshot_side_was_not_full(tmp_path):
    assert problems(tmp_path, lines(closed(99, 10, 2999000))) == [
        (3, "OrderClosed names order 99, which is not in the book (the bid side of the snapshot was not full, "
            "so every resting order was in it)")]


def test_unknown_ids_are_allowed_and_counted_under_the_top_1000_rule(tmp_path):
    # 1000 bids in the snapshot: deeper bids exist, so a close or match of one is legal.
    bids = [(100 + i, 10, 2_000_000 - i) for i in range(1000)]
    body = lines(closed(5, 10, 1_000_000), matched(3, 1_500_000, bid=6, bid_rem=1, ask=7000, ask_rem=0),
                 closed(7, -10, 4_000_000), snapshot=snap(*bids, (3, -5, 3_000_000)))
    report = validate(read_jsonl(write(tmp_path, body)))
    assert report.unknown_refs == 2  # bid 5 closed, bid 6 matched (ask 7000 is a new taker)
    assert [(p.line, p.message[:38]) for p in report.problems] == [
        (5, "OrderClosed names order 7, which is no")]  # the ask side was not full


def test_close_twice_and_match_after_close(tmp_path):
    body = lines(closed(1, 100, 3000000), closed(1, 100, 3000000), matched(5, 3000100, bid=1, bid_rem=0, ask=3, ask_rem=65))
    assert problems(tmp_path, body) == [(4, "OrderClosed names order 1, closed on line 3"),
                                        (5, "OrdersMatched bid names order 1, closed on line 3")]


def test_close_must_agree_with_the_book(tmp_path):
    assert problems(tmp_path, lines(closed(1, -100, 3000000))) == [
        (3, "OrderClosed 1 quantity -100 has the wrong sign for the order (100)")]
    assert problems(tmp_path, lines(closed(1, 99, 3000000))) == [
        (3, "OrderClosed 1 quantity 99 differs from its remaining 100")]
    assert problems(tmp_path, lines(closed(3, -70, 3000000))) == [
        (3, "OrderClosed 3 price 3000000 differs from the order's price 3000100")]


def test_match_remainders_must_follow_from_the_book(tmp_path):
    # ask 3 has 70: trading 30 leaves exactly 40; bid 1 has 100: at most 70 may be left
    assert problems(tmp_path, lines(matched(30, 3000100, bid=50, bid_rem=0, ask=3, ask_rem=41))) == [
        (3, "ask_rem 41 != remaining 70 - traded 30 for ask 3")]
    assert problems(tmp_path, lines(matched(30, 3000000, bid=1, bid_rem=71, ask=50, ask_rem=0))) == [
        (3, "bid_rem 71 > remaining 100 - traded 30 for bid 1")]
    # the buyer's fee comes out of the bid's reservation: less than 70 left is fine
    assert problems(tmp_path, lines(matched(30, 3000000, bid=1, bid_rem=69, ask=50, ask_rem=0))) == []


def test_match_sides_and_fields(tmp_path):
    assert problems(tmp_path, lines(matched(5, 3000100, bid=3, bid_rem=0, ask=50, ask_rem=0))) == [
        (3, "OrdersMatched bid 3 is an ask in the book")]
    assert problems(tmp_path, lines(matched(5, 3000100, bid=50, ask=3, ask_rem=65))) == [
        (3, "OrdersMatched has 'bid' 50 but no 'bid_rem'")]
    assert problems(tmp_path, lines(matched(5, 3000100))) == [(3, "OrdersMatched names neither a bid nor an ask")]
    assert problems(tmp_path, lines(matched(0, 3000100, ask=3, ask_rem=70))) == [
        (3, "OrdersMatched with quantity 0, price 3000100, total 0 (need quantity > 0, price > 0, total >= 0)")]


def test_snapshot_checks(tmp_path):
    crossed = snap((1, 10, 3000200), (2, -10, 3000100))
    assert problems(tmp_path, lines(snapshot=crossed)) == [(2, "snapshot is crossed: best bid 3000200 >= best ask 3000100")]
    dup = snap((1, 10, 3000000), (1, 10, 3000000))
    assert problems(tmp_path, lines(snapshot=dup)) == [(2, "snapshot lists order 1 twice")]
    body = lines(closed(1, 100, 3000000))
    body.append({"t": T0 + 9000, "market": "XBT:GBP", "reply": "WatchOrders", "m": snap(*BOOK)})
    assert problems(tmp_path, body) == [(4, "snapshot lists order 1, closed on line 3")]


def test_notices_before_the_snapshot_are_checked_after_it(tmp_path):
    # IMPL-GUIDE: early notices are buffered and applied to the snapshot once it arrives.
    body: list[dict[str, Any] | str] = [
        {"t": T0, "m": opened(10, 5, 2999950)},
        {"t": T0 + 1, "m": closed(1, 100, 3000000)},
        {"t": T0 + 2, "market": "XBT:GBP", "reply": "WatchOrders", "m": snap(*BOOK)},
        {"t": T0 + 3, "m": closed(10, 5, 2999950)},
        {"t": T0 + 4, "m": closed(1, 100, 3000000)},
    ]
    assert problems(tmp_path, body) == [(6, "OrderClosed names order 1, closed on line 3")]
    book = replay_book(read_jsonl(write(tmp_path, body[:4])), XBT_GBP)
    assert book.orders()["id"].tolist() == [2, 3, 4]


def test_a_gap_forgets_the_book_until_the_next_snapshot(tmp_path):
    body = lines(opened(10, 5, 2999950))
    body += [
        {"t": T0 + 9000, "gap": "session 1 ended: connection reset"},
        {"t": T0 + 9001, "m": closed(2, 50, 2999900)},  # before the new snapshot: buffered
        {"t": T0 + 9002, "market": "XBT:GBP", "reply": "WatchOrders", "m": snap((2, 50, 2999900), (4, -20, 3000200))},
        {"t": T0 + 9003, "m": closed(10, 5, 2999950)},  # 10 was closed during the gap: unknown now
    ]
    assert problems(tmp_path, body) == [
        (7, "OrderClosed names order 10, which is not in the book (the bid side of the snapshot was not full, "
            "so every resting order was in it)")]
    rec = read_jsonl(write(tmp_path, body[:5]))
    assert replay_book(rec, XBT_GBP).orders()["id"].tolist() == [4]
    cut = read_jsonl(write(tmp_path, body[:3]))  # ends after the gap: the book is unknown again
    assert not replay_book(cut, XBT_GBP).ready
    assert validate(cut).unsnapshotted == 0
    assert validate(read_jsonl(write(tmp_path, body[:4]))).unsnapshotted == 1


def test_raise_for_problems_names_file_line_and_the_rest(tmp_path):
    p = write(tmp_path, lines(opened(2, 5, 1), opened(3, 5, 1), opened(4, 5, 1)))
    with pytest.raises(RemoteProtocolError, match=r"rec.jsonl: 3 problem\(s\): line 3: OrderOpened 2.*\(and 1 more\)"):
        validate(read_jsonl(p)).raise_for_problems(show=2)
    with pytest.raises(RemoteProtocolError, match="line 3: OrderOpened 2"):
        load(p)
    assert len(load(p, check=False)) == 4


# ---------------------------------------------------------------------------------------
# Parse errors: file:line and what is wrong


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "rec.jsonl:3: not JSON"),
    ('{"t": true, "m": {"notice": "BalanceChanged", "asset": 1, "balance": 2}}', "rec.jsonl:3: bad line: Expected `int`, got `bool`"),
    ('{"t": 1.5, "m": {"notice": "BalanceChanged", "asset": 1, "balance": 2}}', "rec.jsonl:3: bad line: Expected `int`"),
    ('{"t": 1, "x": 2, "m": {}}', "rec.jsonl:3: bad line: Object contains unknown field `x`"),
    ('{"t": 1}', "rec.jsonl:3: the line has no message 'm'"),
    ('{"t": 1, "market": "XBT:GBP", "m": {"notice": "BalanceChanged", "asset": 1, "balance": 2}}',
     "rec.jsonl:3: a notice line has only 't' and 'm'"),
    ('{"t": 1, "m": {"notice": "OrderOpened", "id": 1, "base": 63488, "counter": 64000, "quantity": 1, "price": 1, "time": 1}}',
     r"rec.jsonl:3: OrderOpened for XBT:EUR, which the header does not list \['XBT:GBP'\]"),
    ('{"t": 1, "m": {"notice": "OrderOpened", "id": 1.5}}', "rec.jsonl:3: invalid notice"),
    ('{"t": 1, "m": {"notice": "OrdersMatched", "ask_rem": 5, "base": 63488, "counter": 64032, "quantity": 1, "price": 1, "total": 1, "time": 1}}',
     "rec.jsonl:3: OrdersMatched has 'bid_rem'/'ask_rem' without its 'bid'/'ask'"),
    ('{"t": 1, "reply": "WatchOrders", "m": {"error_code": 0, "orders": []}}', "rec.jsonl:3: a reply line needs 'market'"),
    ('{"t": 1, "market": "XBT:USD", "reply": "WatchOrders", "m": {"error_code": 0, "orders": []}}',
     "rec.jsonl:3: market 'XBT:USD' is not in the header"),
    ('{"t": 1, "market": "XBT:GBP", "reply": "GetOrders", "m": {"error_code": 0, "orders": []}}',
     "rec.jsonl:3: 'reply' must be \"WatchOrders\" or \"WatchTicker\""),
    ('{"t": 1, "market": "XBT:GBP", "reply": "WatchOrders", "m": {"error_code": 2, "error_msg": "You are already watching"}}',
     r"rec.jsonl:3: WatchOrders reply is an error \(2: You are already watching\)"),
    ('{"t": 1, "market": "XBT:GBP", "reply": "WatchOrders", "m": {"error_code": 0}}',
     "rec.jsonl:3: WatchOrders reply without 'orders'"),
    ('{"t": 1, "gap": "x", "m": {}}', "rec.jsonl:3: a gap line has only"),
    ("", "rec.jsonl:3: blank line"),
])
def test_malformed_lines_are_refused_with_file_and_line(tmp_path, line, message):
    body: list[dict[str, Any] | str] = [
        {"t": T0, "market": "XBT:GBP", "reply": "WatchOrders", "m": snap(*BOOK)}, line, {"t": T0, "m": opened(9, 1, 1)}]
    with pytest.raises(RemoteProtocolError, match=message):
        read_jsonl(write(tmp_path, body))


@pytest.mark.parametrize(("header", "message"), [
    ("", "rec.jsonl:1: empty file"),
    ('{"orders": []}', r"rec.jsonl:1: not a cftrade recording \(header 'format' is None"),
    ("[1]", "rec.jsonl:1: the header must be a JSON object"),
    ('{"format": "cftrade-rec/1", "api_version": 3, "markets": ["XBT:GBP"]}', "'api_version' must be 1 or 2, was 3"),
    ('{"format": "cftrade-rec/1", "api_version": 2, "markets": []}', "'markets' must be a non-empty list"),
    ('{"format": "cftrade-rec/1", "api_version": 2, "markets": ["XBT:DOGE"]}', "rec.jsonl:1: header: unknown market 'XBT:DOGE'"),
    ('{"format": "cftrade-rec/1", "api_version": 2, "markets": ["XBT:GBP", "XBT/GBP"]}', "lists a market twice"),
    ('{"format": "cftrade-rec/1", "api_version": 2, "markets": ["XBT:GBP"], "user_id": "1"}', "'user_id' must be an integer or null"),
])
def test_bad_headers_are_refused(tmp_path, header, message):
    p = tmp_path / "rec.jsonl"
    p.write_text(header + "\n" if header else "")
    with pytest.raises(RemoteProtocolError, match=message):
        read_jsonl(p)


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(RemoteProtocolError, match="no such recording"):
        load(tmp_path / "nope.jsonl")


def test_unknown_notice_types_are_kept_verbatim_and_ignored(tmp_path):
    body = lines(opened(10, 5, 2999950))
    body.insert(1, '{"t":1700000000001500,"m":{"notice":"FutureNotice","x":1}}')
    rec = read_jsonl(write(tmp_path, body))
    assert validate(rec).ok
    assert rec.line_type.tolist() == [LT_SNAPSHOT, LT_NOTICE, LT_BOOK]
    assert rec.raw_line(1) == body[1].encode()
    assert replay_book(rec, XBT_GBP).orders()["id"].tolist() == [1, 2, 3, 4, 10]


# ---------------------------------------------------------------------------------------
# Writer, columns and round trips


def _mixed(tmp_path: Path) -> Path:
    """Every kind of line the writer can produce, own-order notices included."""
    p = tmp_path / "mixed.jsonl"
    header = Header(markets=("XBT:GBP", "XBT:EUR"), source="ws://127.0.0.1:1/", user_id=1, created_us=T0,
                    meta={"note": "test"})
    with RecordingWriter(p, header) as w:
        w.snapshot(T0 + 1, XBT_GBP, WatchOrdersReply(tag=5, orders=[BookOrder(id=1, quantity=100, price=3000000, time=T0)]))
        w.ticker(T0 + 1, XBT_GBP, WatchTickerReply(tag=6, last=None, bid=3000000, ask=None, low=None, high=None, volume=0))
        w.snapshot(T0 + 2, "XBT:EUR", WatchOrdersReply(orders=[]))
        w.notice(T0 + 3, BalanceChanged(asset=B, balance=10**9))
        w.notice(T0 + 4, OrderOpened(id=7, tonce=None, base=B, counter=C, quantity=-40, price=3000050, time=T0 + 4))
        w.notice(T0 + 5, OrderOpened(id=8, base=B, counter=C, quantity=25, price=3000010, time=T0 + 5))
        w.notice(T0 + 6, OrdersMatched(bid=9, bid_tonce=17, ask=7, base=B, counter=C, quantity=40, price=3000050,
                                       total=1200020, bid_rem=0, ask_rem=0, time=T0 + 6, bid_base_fee=0,
                                       bid_counter_fee=360))
        w.notice(T0 + 6, OrderClosed(id=9, tonce=17, base=B, counter=C, quantity=0, price=3000060))
        w.notice(T0 + 7, OrderClosed(id=7, base=B, counter=C, quantity=0, price=3000050))
        w.notice(T0 + 8, OrdersMatched(ask=8 + 100, base=B, counter=C, quantity=5, price=3000010, total=150000,
                                       ask_rem=3, time=T0 + 8, bid=8, bid_rem=20))
        w.notice(T0 + 9, TickerChanged(base=B, counter=C, last=3000010))
        w.gap(T0 + 10, "session 1 ended: reset")
        w.gap(T0 + 11, "notices dropped (feed gap)", XBT_EUR)
        assert w.lines == 14
    return p


def test_line_types_and_columns_of_every_kind_of_line(tmp_path):
    rec = read_jsonl(_mixed(tmp_path))
    assert rec.header.user_id == 1 and rec.header.meta == {"note": "test"}
    assert rec.line_type.tolist() == [LT_SNAPSHOT, LT_TICKER, LT_SNAPSHOT, LT_NOTICE, LT_OWN, LT_BOOK, LT_OWN,
                                      LT_OWN, LT_BOOK, LT_BOOK, LT_NOTICE, LT_GAP, LT_GAP]
    assert rec.market.tolist() == [0, 0, 1, -1, 0, 0, 0, 0, 0, 0, 0, -1, 1]
    assert rec.events["recv_time"].tolist() == [T0 + t for t in (1, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10, 11)]
    m = rec.events[6]  # own bid 9 matched against ask 7
    assert (m["id"], m["ask_id"], m["remaining"], m["ask_remaining"], m["total"]) == (9, 7, 0, 0, 1200020)
    assert rec.snap_tags.tolist() == [5, 0]
    assert rec.snapshot(0).orders == [BookOrder(id=1, quantity=100, price=3000000, time=T0)]
    assert isinstance(rec.message(11), Gap) and rec.message(12) == Gap("notices dropped (feed gap)", XBT_EUR)
    assert rec.message(6).bid_counter_fee == 360  # the own fee survives (raw line)
    assert validate(rec).ok


def test_jsonl_npz_jsonl_round_trip_is_byte_exact(tmp_path):
    src = _mixed(tmp_path)
    rec = read_jsonl(src)
    save_npz(rec, tmp_path / "m.npz")
    back = read_npz(tmp_path / "m.npz")
    for name in ("events", "market", "line_type", "raw_offsets", "snap_rows", "snap_tags", "snap_offsets", "snap_orders"):
        assert np.array_equal(getattr(back, name), getattr(rec, name)), name
    write_jsonl(back, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == src.read_bytes()
    assert [ln.message for ln in back.lines()] == [ln.message for ln in rec.lines()]


def test_foreign_key_order_and_spacing_round_trip_to_the_same_messages(tmp_path):
    # Someone else's producer: keys in another order, spaces, extra notice fields (ignored).
    body = ['{ "m": {"time": %d, "price": 2999950, "quantity": 5, "counter": %d, "base": %d, "id": 10, '
            '"notice": "OrderOpened", "extra": 1}, "t": %d }' % (T0, C, B, T0 + 5000)]
    p = write(tmp_path, lines() + body)
    rec = read_jsonl(p)
    out = tmp_path / "x.npz"
    convert(p, out)
    write_jsonl(read_npz(out), tmp_path / "canon.jsonl")
    canon = read_jsonl(tmp_path / "canon.jsonl")
    assert [ln.message for ln in canon.lines()] == [ln.message for ln in rec.lines()]
    assert (tmp_path / "canon.jsonl").read_text().splitlines()[-1] == (
        '{"t":%d,"m":{"notice":"OrderOpened","id":10,"base":%d,"counter":%d,"quantity":5,"price":2999950,"time":%d}}'
        % (T0 + 5000, B, C, T0))


def test_load_detects_the_form_by_content_and_convert_goes_both_ways(tmp_path):
    src = _mixed(tmp_path)
    convert(src, tmp_path / "a.npz", compress=True)
    (tmp_path / "a.npz").rename(tmp_path / "a.dat")  # the name does not matter
    rec = load(tmp_path / "a.dat")
    convert(tmp_path / "a.dat", tmp_path / "b.jsonl")
    assert (tmp_path / "b.jsonl").read_bytes() == src.read_bytes()
    assert len(rec) == 13


def test_a_damaged_npz_is_refused(tmp_path):
    rec = read_jsonl(_mixed(tmp_path))
    rec.line_type[5] = LT_OWN  # says raw text exists where there is none
    save_npz(rec, tmp_path / "bad.npz")
    with pytest.raises(RemoteProtocolError, match="bad.npz: line 7: raw text missing for line type 1"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(RemoteProtocolError, match="not a cftrade recording"):
        read_npz(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(RemoteProtocolError, match="not a readable .npz recording"):
        load(tmp_path / "junk.npz")


def test_book_events_are_ready_for_apply_batch(tmp_path):
    rec = read_jsonl(_mixed(tmp_path))
    rows, ev = rec.book_events(XBT_GBP)
    assert rows.tolist() == [4, 5, 6, 7, 8, 9] and ev.flags.c_contiguous
    assert rec.book_events("XBT:EUR")[0].tolist() == []
    gbp_only = read_jsonl(write(tmp_path, lines()))
    with pytest.raises(KeyError, match="XBT:EUR is not in this recording"):
        gbp_only.book_events(XBT_EUR)


def test_the_writer_refuses_what_would_make_an_invalid_file(tmp_path):
    w = RecordingWriter(tmp_path / "w.jsonl", Header(markets=("XBT:GBP",)))
    w.notice(T0, BalanceChanged(asset=B, balance=1))
    with pytest.raises(LocalProtocolError, match="receive time went backwards"):
        w.notice(T0 - 1, BalanceChanged(asset=B, balance=1))
    with pytest.raises(LocalProtocolError, match="must be int microseconds"):
        w.notice(1.5, BalanceChanged(asset=B, balance=1))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not in the recording header"):
        w.notice(T0, OrderOpened(id=1, base=B, counter=XBT_EUR.counter.code, quantity=1, price=1, time=1))
    with pytest.raises(LocalProtocolError, match="XBT:EUR is not in the recording header"):
        w.snapshot(T0, XBT_EUR, WatchOrdersReply(orders=[]))
    with pytest.raises(LocalProtocolError, match="WatchOrdersReply with orders"):
        w.snapshot(T0, XBT_GBP, WatchOrdersReply())
    w.close()
    with pytest.raises(LocalProtocolError, match="closed"):
        w.notice(T0, BalanceChanged(asset=B, balance=1))
    with pytest.raises(ValueError, match="at least one market"):
        Header(markets=())


def test_record_adapter_maps_client_events(tmp_path):
    p = tmp_path / "a.jsonl"
    with RecordingWriter(p, Header(markets=("XBT:GBP",))) as w:
        wo = WatchOrders(base=B, counter=C, watch=True)
        assert w.record(ReplyEvent(1, wo, WatchOrdersReply(orders=[])), T0)
        assert w.record(ReplyEvent(1, WatchTicker(base=B, counter=C, watch=True), WatchTickerReply(volume=0)), T0)
        assert not w.record(ReplyEvent(1, GetOrders(), GetOrdersReply(orders=[])), T0)
        assert not w.record(SessionStarted(1, None), T0)
        assert w.record(OrderOpened(id=1, base=B, counter=C, quantity=1, price=1, time=1), T0 + 1)
        assert not w.record(OrderOpened(id=2, base=B, counter=XBT_EUR.counter.code, quantity=1, price=1, time=1), T0 + 1)
        assert w.record(FeedGap(1, B, C), T0 + 2)
        assert not w.record(FeedGap(1, B, XBT_EUR.counter.code), T0 + 2)
        assert w.record(SessionEnded(1, "reset"), T0 + 3)
        assert w.skipped == 1
    rec = read_jsonl(p)
    assert rec.line_type.tolist() == [LT_SNAPSHOT, LT_TICKER, LT_BOOK, LT_GAP, LT_GAP]
    assert rec.message(4) == Gap("session 1 ended: reset", None)


# ---------------------------------------------------------------------------------------
# Capture from an exchange


def _same_book(book: Any, bids: list[BookOrder], asks: list[BookOrder]) -> None:
    o = book.orders()
    got = list(zip(o["id"].tolist(), o["quantity"].tolist(), o["price"].tolist(), o["time"].tolist(), strict=True))
    want = sorted((b.id, b.quantity, b.price, b.time) for b in bids + asks)
    assert got == want
    assert len(want) > 50


async def test_recording_the_embedded_exchange_replays_to_its_final_book(tmp_path, autojump_clock):
    out = tmp_path / "live.jsonl"
    result = await record(RecordOptions(out=out, duration=300, transport="memory", handle_signals=False, seed=3))
    assert trio.current_time() == pytest.approx(300.5)  # duration + drain, virtual
    rec = load(out)  # validates: no problems
    report = validate(rec)
    assert report.counts["snapshots"] == 2 and report.counts["ticker_replies"] == 2
    assert report.counts["OrdersMatched"] > 50 and report.counts["other_notices"] > 10  # trades and tickers
    assert rec.header.markets == ("XBT:GBP", "XBT:EUR") and rec.header.source == "embedded:ws://127.0.0.1:1/"
    assert result.lines == len(rec)
    for m in rec.markets:
        _same_book(replay_book(rec, m), *result.exchange.book(*m.codes))


async def test_recording_from_a_url_with_markets_and_npz_output(tmp_path, autojump_clock):
    from engine.exchange.cli import load_config
    from engine.exchange.core import Exchange
    from engine.exchange.server import ExchangeServer

    cfg = load_config(EXCHANGE_YAML)
    exchange = Exchange(cfg.exchange_settings(participants=False), clock_us=lambda: int(trio.current_time() * 1e6) + T0,
                        rng=__import__("random").Random(1))
    server = ExchangeServer(exchange)
    trader = exchange.open_internal_session(1)
    async with trio.open_nursery() as nursery:
        async def dial(target: Any) -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, b)
            return a

        opts = RecordOptions(out=tmp_path / "u.npz", url="ws://127.0.0.1:9/", markets=("XBT:EUR",), dial=dial,
                             handle_signals=False)
        recorder = await nursery.start(record, opts)
        assert recorder.exchange is None
        from engine.protocol.messages import PlaceOrder
        eb, ec = XBT_EUR.codes
        for i in range(5):
            exchange.handle(trader, PlaceOrder(base=eb, counter=ec, quantity=(i + 1) * 1000, price=3000000 + i))
            await trio.sleep(1)
        recorder.stop()
    rec = load(tmp_path / "u.npz")
    assert rec.header.markets == ("XBT:EUR",) and rec.header.user_id is None
    assert rec.events["kind"].tolist().count(1) == 5  # the five OrderOpened, public (no tonce)
    assert (rec.line_type == LT_BOOK).sum() == 5
    assert replay_book(rec, XBT_EUR).orders()["quantity"].tolist() == [1000, 2000, 3000, 4000, 5000]


async def test_cftrade_run_records_its_session(tmp_path, autojump_clock):
    from engine.config import load_run_config
    from engine.runner import Runner, RunOptions

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
markets: ["XBT:GBP"]
strategies:
  - name: mm
    class: market_maker
    market: "XBT:GBP"
    params: {{size: "0.01", half_spread: "2.00", min_requote_seconds: 2.0}}
recording:
  enabled: true
  path: "{tmp_path / 'recs'}"
run:
  seed: 3
  state_dir: "{tmp_path / 'state'}"
""")
    runner = Runner(load_run_config(str(cfg)), RunOptions(duration=300, status=False, handle_signals=False,
                                                         transport="memory", watchdog_seconds=0))
    result = await runner.run()
    assert result.exit_code == 0, result.summary
    files = list((tmp_path / "recs").glob("run-*-seed3.jsonl"))
    assert [str(f) for f in files] == [result.summary["recording"]]
    rec = load(files[0])
    assert rec.header.user_id == 1 and rec.header.meta["strategies"] == ["mm"]
    own = rec.line_type == LT_OWN
    assert own.sum() > 10  # the market maker's own orders, with tonces and fees
    fills = [rec.message(int(r)) for r in np.flatnonzero(own & (rec.events["kind"] == 3))]
    assert len(fills) == result.summary["fills"]
    assert any(type(ln.message) is BalanceChanged for ln in rec.lines())
    # The file is exactly what the runtime saw: replaying it gives the runner's own book.
    mine = runner.core.books[XBT_GBP].orders()
    again = replay_book(rec, XBT_GBP).orders()
    for k in ("id", "quantity", "price", "time"):
        assert np.array_equal(mine[k], again[k]), k


def test_record_cli_argument_errors(tmp_path, capsys):
    assert record_main([]) == 2
    assert "--out FILE is required" in capsys.readouterr().err
    assert record_main(["--out", str(tmp_path / "x"), "--duration", "0"]) == 2
    assert record_main(["--out", str(tmp_path / "x"), "--url", "ws://127.0.0.1:1/", "--config", "c.yaml"]) == 2
    assert record_main(["--generate", "--url", "ws://x/", "--out", str(tmp_path / "x")]) == 2
    assert record_main(["--out", str(tmp_path / "x"), "--url", "ws://example.com/", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_record_cli_generate(tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    assert record_main(["--generate", "--hours", "0.02", "--seed", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["lines"] == len(load(out)) > 100


def test_record_cli_check_and_convert(tmp_path, capsys):
    src = _mixed(tmp_path)
    assert record_main(["--convert", str(src), "--out", str(tmp_path / "m.npz")]) == 0
    assert record_main(["--convert", str(tmp_path / "m.npz"), "--out", str(tmp_path / "m2.jsonl")]) == 0
    assert (tmp_path / "m2.jsonl").read_bytes() == src.read_bytes()
    capsys.readouterr()
    assert record_main(["--check", str(tmp_path / "m.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    bad = write(tmp_path, lines(opened(2, 5, 1)))
    assert record_main(["--check", str(bad)]) == 1
    assert json.loads(capsys.readouterr().out)["first_problems"] == ["line 3: OrderOpened 2: the id is not new (seen on line 2)"]
    assert record_main(["--convert", str(bad), "--out", str(tmp_path / "b.npz")]) == 1
    assert "line 3: OrderOpened 2" in capsys.readouterr().err
    assert record_main(["--convert", str(bad)]) == 2


class _Cuttable(trio.abc.Stream):
    """One end of a memory link that can be cut: then reads see EOF and writes fail."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.cut = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.cut:
            raise trio.BrokenResourceError("link cut")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.cut:
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.inner.receive_some(max_bytes)
        return b"" if self.cut else data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_dropped_connection_is_a_gap_then_fresh_snapshots(tmp_path, autojump_clock):
    from engine.exchange.cli import load_config
    from engine.exchange.core import Exchange
    from engine.exchange.server import ExchangeServer
    from engine.protocol.messages import CancelOrder, PlaceOrder

    cfg = load_config(EXCHANGE_YAML)
    exchange = Exchange(cfg.exchange_settings(participants=False), clock_us=lambda: int(trio.current_time() * 1e6) + T0,
                        rng=__import__("random").Random(1))
    server = ExchangeServer(exchange)
    trader = exchange.open_internal_session(1)
    links: list[tuple[_Cuttable, _Cuttable]] = []
    async with trio.open_nursery() as nursery:
        async def dial(target: Any) -> trio.abc.Stream:
            a, b = trio.testing.memory_stream_pair()
            link = (_Cuttable(a), _Cuttable(b))
            links.append(link)
            nursery.start_soon(server.handle_stream, link[1])
            return link[0]

        recorder = await nursery.start(record, RecordOptions(out=tmp_path / "g.jsonl", url="ws://127.0.0.1:9/",
                                                             dial=dial, handle_signals=False))
        place = [exchange.handle(trader, PlaceOrder(base=B, counter=C, quantity=1000 * (i + 1), price=3000000 + i))
                 for i in range(3)]
        await trio.sleep(1)
        for end in links[0]:  # the connection dies ...
            end.cut = True
        exchange.handle(trader, CancelOrder(id=place[0].id))  # ... and this close is never seen
        exchange.handle(trader, PlaceOrder(base=B, counter=C, quantity=-500, price=3100000))
        await trio.sleep(5)  # backoff, reconnect, re-subscribe
        exchange.handle(trader, CancelOrder(id=place[1].id))
        await trio.sleep(1)
        recorder.stop()
    assert len(links) == 2
    rec = load(tmp_path / "g.jsonl")
    report = validate(rec)
    assert report.counts["gaps"] == 1 and report.counts["snapshots"] == 2
    gap = int(np.flatnonzero(rec.line_type == LT_GAP)[0])
    assert rec.message(gap).reason.startswith("session 1 ended")
    assert rec.snap_rows.tolist()[1] > gap  # the new snapshot comes after the gap
    assert replay_book(rec, XBT_GBP).orders()["quantity"].tolist() == [3000, -500]


def test_the_documented_minimal_file_is_valid(tmp_path):
    doc = (EXCHANGE_YAML.parents[1] / "docs" / "RECORDING.md").read_text()
    block = doc.split("### 1.4 A complete minimal file\n\n```\n", 1)[1].split("```", 1)[0]
    p = tmp_path / "doc.jsonl"
    p.write_text(block)
    rec = load(p)
    report = validate(rec)
    assert report.ok and report.takers == 1 and len(rec) == 5
    assert replay_book(rec, XBT_GBP).orders()["id"].tolist() == [1, 3]


async def test_record_takes_markets_and_exchange_from_a_run_config(tmp_path, autojump_clock):
    run_cfg = EXCHANGE_YAML.parent / "market_maker.yaml"
    r = await record(RecordOptions(out=tmp_path / "a.jsonl", config=run_cfg, duration=20, transport="memory",
                                   handle_signals=False))
    assert r.header.markets == ("XBT:GBP",) and r.exchange is not None
    r = await record(RecordOptions(out=tmp_path / "b.jsonl", config=EXCHANGE_YAML, duration=20, transport="memory",
                                   handle_signals=False, markets=("XBT:EUR",)))
    assert r.header.markets == ("XBT:EUR",)
    for name in ("a.jsonl", "b.jsonl"):
        rec = load(tmp_path / name)
        assert validate(rec).counts["OrderOpened"] > 10
