"""The batch path: one compiled call per block == the per-event path == the reference, and
its stops (top of book, own orders, timers) hand control back at exactly the right event."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.protocol.messages import BalanceChanged, BookOrder, OrderOpened
from engine.scale import XBT_GBP
from engine.state.book import OWN, TIMER, TOP_PRICE, TOP_QTY, Book, apply_batch
from engine.state.events import (
    EV_CLOSE,
    EV_MATCH,
    EV_OPEN,
    EV_OTHER,
    EVENT_DTYPE,
    EVF_HAS_ASK,
    EVF_HAS_BID,
    EVF_OWN,
    decode_lines,
    events_from_notices,
    generate_lines,
    load_jsonl,
    validate_events,
    write_jsonl,
)
from engine.state.naive_book import NaiveBook
from tests.test_book import closed, matched, opened, salted_stream

XBT, GBP = XBT_GBP.codes


def per_event(snap: list[BookOrder], stream: list, window: int | None) -> tuple[Book, list[int], list[int], list[int]]:  # type: ignore[type-arg]
    book = Book(window=window)
    book.load_snapshot(snap)
    bb, ba, flags = [], [], []
    for n in stream:
        flags.append(book.apply(n))
        bb.append(book.best_bid or 0)
        ba.append(book.best_ask or 0)
    return book, bb, ba, flags


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [64, None])
def test_batch_equals_per_event_equals_reference(seed: int, window: int | None) -> None:
    snap, stream = salted_stream(seed, 4000, resting=200)
    book, bb, ba, _ = per_event(snap, stream, window)
    ref = NaiveBook()
    ref.load_snapshot(snap)
    ref.apply_all(stream)
    ev = events_from_notices(stream)
    batch = Book(window=window)
    batch.load_snapshot(snap)
    r = apply_batch(batch, ev)
    assert r.n_applied == len(stream) and batch.last_stop == 0
    assert r.best_bid.tolist() == bb and r.best_ask.tolist() == ba
    assert batch.checksum() == book.checksum() == ref.checksum()
    assert (batch.best_bid, batch.best_ask) == (book.best_bid, book.best_ask) == (ref.best_bid, ref.best_ask)
    assert batch.stats().events == book.stats().events == len(stream)
    batch.check()


def test_batch_grows_the_arena_mid_block() -> None:
    stream = [opened(10 * i + 7, (1 if i % 2 else -1) * (i + 1), 100_000 + (i if i % 2 == 0 else -i), i) for i in range(1, 3000)]
    ev = events_from_notices(stream)
    book = Book(capacity=64)
    book.load_snapshot([])
    r = apply_batch(book, ev)
    assert r.n_applied == len(stream) and len(book) == len(stream)
    assert book.stats().capacity >= len(stream)
    ref = NaiveBook()
    ref.load_snapshot([])
    ref.apply_all(stream)
    assert book.checksum() == ref.checksum()
    book.check()


@pytest.mark.parametrize("mask", [TOP_PRICE, TOP_QTY, OWN, TOP_PRICE | OWN])
def test_stops_at_the_first_event_the_strategy_must_see_and_resumes(mask: int) -> None:
    snap, stream = salted_stream(7, 3000, resting=150)
    # Some own orders (a tonce key) so that OWN stops happen.
    stream = [opened(n.id, n.quantity, n.price, n.time, tonce=None) if isinstance(n, OrderOpened) and n.id % 17 == 0 else n for n in stream]
    _, bb, ba, flags = per_event(snap, stream, None)
    ev = events_from_notices(stream)
    book = Book()
    book.load_snapshot(snap)
    out_bb: list[int] = []
    out_ba: list[int] = []
    start = stops = 0
    buf = (np.empty(len(ev), dtype=np.int64), np.empty(len(ev), dtype=np.int64))
    while start < len(ev):
        r = apply_batch(book, ev, start, mask, out=buf)
        expected = next((i for i in range(start, len(ev)) if flags[i] & mask), len(ev) - 1)
        assert start + r.n_applied - 1 == expected
        if expected < len(ev) - 1 or flags[expected] & mask:
            assert book.last_stop == flags[expected]
            stops += 1
        out_bb += r.best_bid.tolist()
        out_ba += r.best_ask.tolist()
        start += r.n_applied
    assert out_bb == bb and out_ba == ba
    assert stops == sum(1 for f in flags if f & mask) > 10


def test_timer_stops_before_the_event_that_reaches_it() -> None:
    stream = [opened(i, 5, 100 + i, t=1000 + 10 * i) for i in range(1, 50)]
    ev = events_from_notices(stream)
    assert ev["recv_time"].tolist() == [1000 + 10 * i for i in range(1, 50)]  # recv = exchange time by default
    book = Book()
    book.load_snapshot([])
    r = apply_batch(book, ev, 0, 0, until=1095)
    assert r.n_applied == 9 and book.last_stop == TIMER and len(book) == 9  # the event at 1100 waits
    r = apply_batch(book, ev, 9, 0, until=1100)
    assert r.n_applied == 0 and book.last_stop == TIMER
    r = apply_batch(book, ev, 9)
    assert r.n_applied == 40 and book.last_stop == 0 and len(book) == 49


def test_events_columns_and_kinds() -> None:
    stream = [
        opened(1, 5, 100, t=11, tonce=None),
        matched(1, 2, bid_rem=3, ask_rem=7, ask_tonce=4),
        matched(None, 1, ask_rem=0),
        closed(1, 3, 100),
        BalanceChanged(asset=GBP, balance=1),
    ]
    ev = events_from_notices(stream, recv_times=[5, 6, 7, 8, 9])
    assert EVENT_DTYPE.itemsize == 80
    assert ev["kind"].tolist() == [EV_OPEN, EV_MATCH, EV_MATCH, EV_CLOSE, EV_OTHER]
    assert ev["recv_time"].tolist() == [5, 6, 7, 8, 9]
    assert ev["exch_time"].tolist() == [11, 9, 9, 9, 9]  # OrderClosed carries the last time forward
    assert ev["flags"].tolist() == [EVF_OWN, EVF_HAS_BID | EVF_HAS_ASK | 2, EVF_HAS_ASK, 0, 0]
    assert (ev[1]["id"], ev[1]["remaining"], ev[1]["ask_id"], ev[1]["ask_remaining"]) == (1, 3, 2, 7)
    assert ev[0]["quantity"] == 5 and ev[3]["quantity"] == 3


def test_jsonl_roundtrip_and_validation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = generate_lines(3000, seed=9, resting=300)
    path = tmp_path / "rec.jsonl"
    write_jsonl(path, lines)
    rec = load_jsonl(path)
    snap, notices = decode_lines(lines)
    assert rec.market == XBT_GBP and rec.lines == 3001 and len(rec.events) == 3000
    assert rec.snapshot == snap
    a, b = Book(), Book()
    a.load_snapshot(rec.snapshot)
    b.load_snapshot(snap)
    apply_batch(a, rec.events)
    b.apply_all(notices)
    assert a.checksum() == b.checksum()

    bad = rec.events.copy()
    bad[17]["kind"] = 9
    with pytest.raises(RemoteProtocolError, match="event 17 is invalid"):
        validate_events(bad)
    with pytest.raises(RemoteProtocolError, match="EVENT_DTYPE"):
        validate_events(np.zeros(3, dtype=np.int64))
    (tmp_path / "bad.jsonl").write_bytes(lines[0] + b"\n" + lines[1] + b"\n{\"notice\":\"OrderOpened\"}\n")
    with pytest.raises(RemoteProtocolError, match=r"bad.jsonl:3"):
        load_jsonl(tmp_path / "bad.jsonl")
    (tmp_path / "err.jsonl").write_bytes(b'{"tag":1,"error_code":1,"error_msg":"You specified an invalid asset pair."}\n')
    with pytest.raises(RemoteProtocolError, match="is an error"):
        load_jsonl(tmp_path / "err.jsonl")


def test_generator_mix_is_as_documented() -> None:
    lines = generate_lines(40_000, seed=1)
    snap, notices = decode_lines(lines)
    ev = events_from_notices(notices)
    kinds = ev["kind"]
    n = len(ev)
    fill_closes = int(((kinds == EV_CLOSE) & (ev["quantity"] == 0)).sum())
    shares = {
        "open": (kinds == EV_OPEN).sum() / n,
        "cancel": ((kinds == EV_CLOSE).sum() - fill_closes) / n,
        "match": (kinds == EV_MATCH).sum() / n,
        "fill_close": fill_closes / n,
    }
    assert abs(shares["open"] - 0.43) < 0.02 and abs(shares["cancel"] - 0.39) < 0.02
    assert abs(shares["match"] - 0.14) < 0.02 and abs(shares["fill_close"] - 0.04) < 0.015
    assert 1800 <= len(snap.orders) <= 2000  # type: ignore[arg-type]
    ids = ev["id"][kinds == EV_OPEN]
    assert (np.diff(ids) > 0).all() and (np.diff(ids) > 1).any()  # increasing, with gaps
    assert lines == generate_lines(40_000, seed=1)  # seeded


def test_batch_argument_errors() -> None:
    book = Book()
    ev = np.zeros(2, dtype=EVENT_DTYPE)
    with pytest.raises(LocalProtocolError, match="before the snapshot"):
        apply_batch(book, ev)
    book.load_snapshot([])
    with pytest.raises(ValueError, match="EVENT_DTYPE"):
        apply_batch(book, np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="start 5 outside"):
        apply_batch(book, ev, 5)
    with pytest.raises(ValueError, match="out buffers"):
        apply_batch(book, ev, out=(np.empty(1, dtype=np.int64), np.empty(1, dtype=np.int64)))
    assert apply_batch(book, ev).n_applied == 2  # EV_OTHER rows are no-ops
