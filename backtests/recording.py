"""Market recordings: the JSON Lines interchange format, its columnar (numpy) twin, validation.

A recording is what a client watching a market received, each message with its local receive
time.  The interchange format (``cftrade-rec/1``, specified in docs/RECORDING.md) is JSON
Lines: a header object on line 1, then one line per received message::

    {"format":"cftrade-rec/1","api_version":2,"markets":["XBT:GBP"],"source":"ws://...","user_id":null,"created_us":...}
    {"t":1700000000012345,"market":"XBT:GBP","reply":"WatchOrders","m":{"error_code":0,"orders":[...]}}
    {"t":1700000000012345,"market":"XBT:GBP","reply":"WatchTicker","m":{"error_code":0,"last":...}}
    {"t":1700000000013001,"m":{"notice":"OrderOpened","id":7,"base":63488,...}}
    {"t":1700000000020000,"gap":"connection lost"}

Writing (plain ``def``; the caller owns the clock)::

    with RecordingWriter(path, Header(markets=("XBT:GBP",), source=url)) as w:
        w.snapshot(t_us, XBT_GBP, watch_orders_reply)
        w.notice(t_us, notice)
        w.record(event, t_us)          # anything a ReconnectingClient's notice stream yields

Reading and checking::

    rec = load("market.jsonl")         # or "market.npz"; parse errors name file:line
    report = validate(rec)             # every problem with its line number
    report.raise_for_problems()
    book = replay_book(rec, XBT_GBP)   # the book after the last line, via the numba kernels

The columnar form (:class:`Recording`, saved as ``.npz``) keeps one row per line after the
header, so row ``i`` is line ``i + 2`` in every message of this module:

* ``events`` -- :data:`engine.state.events.EVENT_DTYPE`, exactly as ``load_jsonl`` and
  ``apply_batch`` use it (book notices fill the columns; every other line is ``EV_OTHER``);
* ``market`` -- int8 index into ``header.markets`` (-1: the line belongs to no market);
* ``line_type`` -- ``LT_BOOK`` (a public book notice, rebuilt from the columns), ``LT_OWN``
  (an own-order book notice: columns *and* the raw line, which keeps tonces and fees),
  ``LT_NOTICE`` (any other notice, raw), ``LT_SNAPSHOT`` (a WatchOrders reply, kept as
  arrays), ``LT_TICKER`` (a WatchTicker reply, raw), ``LT_GAP`` (raw);
* ``raw`` / ``raw_offsets`` -- the verbatim lines of the raw rows (empty for the others);
* ``snap_rows``, ``snap_tags``, ``snap_offsets``, ``snap_orders`` -- every snapshot's orders
  as int64 columns (id, quantity, price, time).

JSONL -> npz is always lossless in content; npz -> JSONL writes back byte for byte the lines
this module's writer produces (other producers' book lines come back with the keys in the
codec's order, same content).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Union

import msgspec
import numpy as np

from engine.client.notices import FeedGap, ReplyEvent, SessionEnded, SessionStarted
from engine.errors import LocalProtocolError, RemoteProtocolError, ScaleError
from engine.protocol.codec import CODEC, UnknownNotice
from engine.protocol.messages import (
    NOTICES,
    UNSET,
    BookOrder,
    ErrorReply,
    Int64,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    UnsetType,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
)
from engine.scale import Market, Scales, market_by_codes, market_by_name
from engine.state.book import Book, apply_batch
from engine.state.events import (
    EV_CLOSE,
    EV_MATCH,
    EV_OPEN,
    EV_OTHER,
    EVENT_DTYPE,
    EVF_HAS_ASK,
    EVF_HAS_BID,
    EVF_OWN,
    EVF_OWN_ASK,
)
from engine.state.events import event_row as _event_row  # the one notice -> EVENT_DTYPE mapping

__all__ = [
    "FORMAT",
    "WATCH_DEPTH",
    "LT_BOOK",
    "LT_OWN",
    "LT_NOTICE",
    "LT_SNAPSHOT",
    "LT_TICKER",
    "LT_GAP",
    "SNAP_DTYPE",
    "Header",
    "Gap",
    "Line",
    "Recording",
    "RecordingWriter",
    "ValidationReport",
    "Problem",
    "read_jsonl",
    "read_npz",
    "load",
    "save_npz",
    "write_jsonl",
    "convert",
    "validate",
    "replay_book",
]

FORMAT: Final = "cftrade-rec/1"
WATCH_DEPTH: Final = 1000
"""WEBSOCKET-README: a WatchOrders snapshot holds at most the top 1000 bids and 1000 asks."""

LT_BOOK, LT_OWN, LT_NOTICE, LT_SNAPSHOT, LT_TICKER, LT_GAP = 0, 1, 2, 3, 4, 5
_RAW_TYPES = (LT_OWN, LT_NOTICE, LT_TICKER, LT_GAP)

SNAP_DTYPE = np.dtype([("id", "<i8"), ("quantity", "<i8"), ("price", "<i8"), ("time", "<i8")])
"""One order of a snapshot, as in the WatchOrders reply (bids > 0, asks < 0)."""

_REPLY_KINDS = {"WatchOrders": LT_SNAPSHOT, "WatchTicker": LT_TICKER}
_HEADER_KEYS = ("format", "api_version", "markets", "source", "user_id", "created_us")


# ---------------------------------------------------------------------------------------
# Header and line objects


@dataclass(frozen=True, slots=True)
class Header:
    """Line 1 of a recording.  ``meta`` holds every other key (e.g. the generator's seed)."""

    markets: tuple[str, ...]
    api_version: int = 2
    source: str = ""
    user_id: int | None = None
    created_us: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.markets:
            raise ValueError("a recording header needs at least one market")
        names = tuple(market_by_name(m).name for m in self.markets)
        if len(set(names)) != len(names):
            raise ValueError(f"a recording header lists a market twice: {list(self.markets)}")
        object.__setattr__(self, "markets", names)
        if self.api_version not in (1, 2):
            raise ValueError(f"api_version must be 1 or 2, was {self.api_version!r}")
        for k in self.meta:
            if k in _HEADER_KEYS:
                raise ValueError(f"meta must not repeat the header key {k!r}")

    @property
    def market_objects(self) -> tuple[Market, ...]:
        return tuple(market_by_name(m) for m in self.markets)

    @property
    def scales(self) -> Scales:
        return Scales(self.api_version)  # type: ignore[arg-type]

    @property
    def watch_depth(self) -> int:
        """Snapshot depth per side of the recorded exchange (``meta["watch_depth"]``, 1000)."""
        d = self.meta.get("watch_depth", WATCH_DEPTH)
        return d if type(d) is int and d > 0 else WATCH_DEPTH

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "api_version": self.api_version,
            "markets": list(self.markets),
            "source": self.source,
            "user_id": self.user_id,
            "created_us": self.created_us,
        }
        obj.update(self.meta)
        return msgspec.json.encode(obj)

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "line 1") -> Header:
        """Parse and check a header line; RemoteProtocolError names what is wrong."""
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError as e:
            raise RemoteProtocolError(f"{where}: the header is not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError(f"{where}: the header must be a JSON object, got {type(obj).__name__}")
        fmt = obj.get("format")
        if fmt != FORMAT:
            raise RemoteProtocolError(
                f"{where}: not a cftrade recording (header 'format' is {fmt!r}, expected {FORMAT!r})"
            )
        markets = obj.get("markets")
        if not isinstance(markets, list) or not markets or not all(isinstance(m, str) for m in markets):
            raise RemoteProtocolError(f"{where}: header 'markets' must be a non-empty list of names like \"XBT:GBP\"")
        api = obj.get("api_version")
        if type(api) is not int or api not in (1, 2):
            raise RemoteProtocolError(f"{where}: header 'api_version' must be 1 or 2, was {api!r}")
        source = obj.get("source", "")
        if not isinstance(source, str):
            raise RemoteProtocolError(f"{where}: header 'source' must be a string, was {source!r}")
        uid = obj.get("user_id")
        if uid is not None and type(uid) is not int:
            raise RemoteProtocolError(f"{where}: header 'user_id' must be an integer or null, was {uid!r}")
        created = obj.get("created_us", 0)
        if type(created) is not int:
            raise RemoteProtocolError(f"{where}: header 'created_us' must be an integer, was {created!r}")
        meta = {k: v for k, v in obj.items() if k not in _HEADER_KEYS}
        try:
            return cls(tuple(markets), api, source, uid, created, meta)
        except (ValueError, ScaleError) as e:
            raise RemoteProtocolError(f"{where}: header: {e}") from None


@dataclass(frozen=True, slots=True)
class Gap:
    """The feed broke here (``market`` None: every market): notices may be missing until
    the next snapshot of the market, which rebuilds its book."""

    reason: str
    market: Market | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One decoded line: ``message`` is a Notice, a WatchOrdersReply, a WatchTickerReply or
    a :class:`Gap`; ``market`` is None for lines of no market (BalanceChanged, ...)."""

    row: int
    t: int
    market: Market | None
    line_type: int
    message: Notice | WatchOrdersReply | WatchTickerReply | Gap

    @property
    def lineno(self) -> int:
        return self.row + 2


# ---------------------------------------------------------------------------------------
# Line encoding (the writer and npz -> JSONL share these, so round trips are byte-exact)


def _notice_line(t: int, notice: Notice) -> bytes:
    return b'{"t":%d,"m":%s}' % (t, CODEC.encode(notice))


def _reply_line(t: int, market: str, kind: str, reply: WatchOrdersReply | WatchTickerReply) -> bytes:
    return b'{"t":%d,"market":"%s","reply":"%s","m":%s}' % (t, market.encode(), kind.encode(), CODEC.encode(reply))


def _gap_line(t: int, reason: str, market: str | None) -> bytes:
    obj: dict[str, Any] = {"t": t}
    if market is not None:
        obj["market"] = market
    obj["gap"] = reason
    return msgspec.json.encode(obj)


def _check_t(t: object, last: int) -> int:
    if type(t) is not int:
        raise LocalProtocolError(f"receive time must be int microseconds, got {type(t).__name__} {t!r}")
    if t < last:
        raise LocalProtocolError(f"receive time went backwards: {t} after {last}")
    return t


class RecordingWriter:
    """Writes a ``cftrade-rec/1`` JSONL file, one line per message (plain ``def``, no I/O
    waits worth a thread: lines are buffered and flushed every ``flush_every`` lines and on
    :meth:`close`).  Times must be int microseconds that never decrease: a writer never
    produces a file :func:`validate` would refuse for its times."""

    def __init__(self, path: str | Path | IO[bytes], header: Header, *, flush_every: int = 4096) -> None:
        if isinstance(path, (str, Path)):
            self.path: Path | None = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[bytes] = self.path.open("wb")
            self._own_fh = True
        else:
            self.path = None
            self._fh = path
            self._own_fh = False
        self.header = header
        self._markets = {market_by_name(m).codes: m for m in header.markets}
        self._buf: list[bytes] = [header.to_json()]
        self._flush_every = flush_every
        self._last = -(2**63)
        self.lines = 1
        """Lines written so far, the header included."""
        self.skipped = 0
        """:meth:`record` only: notices of markets the header does not list (not written)."""
        self.closed = False

    # -- one method per line kind ---------------------------------------------------------

    def _put(self, line: bytes) -> None:
        if self.closed:
            raise LocalProtocolError("the recording is closed")
        buf = self._buf
        buf.append(line)
        self.lines += 1
        if len(buf) >= self._flush_every:
            self.flush()

    def _name(self, market: Market | str) -> str:
        m = market if isinstance(market, Market) else market_by_name(market)
        name = self._markets.get(m.codes)
        if name is None:
            raise LocalProtocolError(f"market {m.name} is not in the recording header {list(self.header.markets)}")
        return name

    def notice(self, t_us: int, notice: Notice) -> None:
        """A notice as received (own-order fields, e.g. ``tonce``, included)."""
        base = getattr(notice, "base", None)
        if base is not None and (base, notice.counter) not in self._markets:  # type: ignore[attr-defined]
            raise LocalProtocolError(f"{type(notice).__name__} of {base}/{notice.counter} is not in "  # type: ignore[attr-defined]
                                     f"the recording header {list(self.header.markets)}")
        self._last = _check_t(t_us, self._last)
        self._put(_notice_line(t_us, notice))

    def snapshot(self, t_us: int, market: Market | str, reply: WatchOrdersReply) -> None:
        """The success reply to ``WatchOrders(watch=true)``: the book snapshot."""
        if not isinstance(reply, WatchOrdersReply) or reply.orders is UNSET:
            raise LocalProtocolError(f"a snapshot must be a WatchOrdersReply with orders, got {reply!r:.80}")
        self._last = _check_t(t_us, self._last)
        self._put(_reply_line(t_us, self._name(market), "WatchOrders", reply))

    def ticker(self, t_us: int, market: Market | str, reply: WatchTickerReply) -> None:
        """The success reply to ``WatchTicker(watch=true)``: the ticker baseline."""
        if not isinstance(reply, WatchTickerReply):
            raise LocalProtocolError(f"expected a WatchTickerReply, got {type(reply).__name__}")
        self._last = _check_t(t_us, self._last)
        self._put(_reply_line(t_us, self._name(market), "WatchTicker", reply))

    def gap(self, t_us: int, reason: str, market: Market | str | None = None) -> None:
        """The feed broke (connection lost, notices dropped): books need a new snapshot."""
        self._last = _check_t(t_us, self._last)
        self._put(_gap_line(t_us, reason, None if market is None else self._name(market)))
        self.flush()  # a gap is where a crash is most likely: keep what came before

    def record(self, event: object, t_us: int) -> bool:
        """Record one event of a :class:`~engine.client.notices.NoticeQueue` (what
        ``ReconnectingClient.notices`` and the runner see).  Returns True if a line was
        written: notices, WatchOrders/WatchTicker subscribe replies, FeedGap and
        SessionEnded (as gaps); other replies and SessionStarted are not part of a recording,
        and notices of markets the header does not list are skipped (counted in ``skipped``)."""
        t = type(event)
        if t is ReplyEvent:
            assert isinstance(event, ReplyEvent)
            cmd, reply = event.command, event.reply
            if isinstance(cmd, WatchOrders) and cmd.watch and isinstance(reply, WatchOrdersReply):
                self.snapshot(t_us, market_by_codes(cmd.base, cmd.counter), reply)
                return True
            if isinstance(cmd, WatchTicker) and cmd.watch and isinstance(reply, WatchTickerReply):
                self.ticker(t_us, market_by_codes(cmd.base, cmd.counter), reply)
                return True
            return False
        if t is FeedGap:
            assert isinstance(event, FeedGap)
            m = market_by_codes(event.base, event.counter)
            if m.codes in self._markets:
                self.gap(t_us, "notices dropped (feed gap)", m)
                return True
            return False
        if t is SessionEnded:
            assert isinstance(event, SessionEnded)
            self.gap(t_us, f"session {event.session} ended: {event.reason}")
            return True
        if t is SessionStarted:
            return False
        if isinstance(event, Notice):
            base = getattr(event, "base", None)
            if base is not None and (base, event.counter) not in self._markets:  # type: ignore[attr-defined]
                self.skipped += 1
                return False
            self.notice(t_us, event)
            return True
        return False

    # -- file handling --------------------------------------------------------------------

    def flush(self) -> None:
        if self._buf:
            self._fh.write(b"\n".join(self._buf) + b"\n")
            self._buf = []
        self._fh.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.closed = True
        if self._own_fh:
            self._fh.close()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# The columnar recording


@dataclass(slots=True)
class Recording:
    """A recording in columns (see the module docstring); row ``i`` is line ``i + 2``."""

    header: Header
    events: np.ndarray
    market: np.ndarray
    line_type: np.ndarray
    raw: bytes
    raw_offsets: np.ndarray
    snap_rows: np.ndarray
    snap_tags: np.ndarray
    snap_offsets: np.ndarray
    snap_orders: np.ndarray
    source: str = "<recording>"

    def __len__(self) -> int:
        return len(self.events)

    @property
    def markets(self) -> tuple[Market, ...]:
        return self.header.market_objects

    def market_index(self, market: Market | str) -> int:
        m = market if isinstance(market, Market) else market_by_name(market)
        try:
            return self.header.markets.index(m.name)
        except ValueError:
            raise KeyError(f"{m.name} is not in this recording (markets: {list(self.header.markets)})") from None

    def raw_line(self, row: int) -> bytes:
        """The verbatim line of a raw row (own notices, other notices, tickers, gaps)."""
        a, b = int(self.raw_offsets[row]), int(self.raw_offsets[row + 1])
        if a == b:
            raise KeyError(f"line {row + 2} is kept as columns, not as raw text")
        return self.raw[a:b]

    def snapshot_arrays(self, k: int) -> np.ndarray:
        """Orders of snapshot ``k`` (SNAP_DTYPE), in the order of the reply."""
        return self.snap_orders[int(self.snap_offsets[k]) : int(self.snap_offsets[k + 1])]

    def snapshot(self, k: int) -> WatchOrdersReply:
        o = self.snapshot_arrays(k)
        orders = [
            BookOrder(id=i, quantity=q, price=p, time=tm)
            for i, q, p, tm in zip(o["id"].tolist(), o["quantity"].tolist(), o["price"].tolist(),
                                   o["time"].tolist(), strict=True)
        ]
        tag = int(self.snap_tags[k])
        return WatchOrdersReply(tag=tag if tag else UNSET, orders=orders)

    def message(self, row: int) -> Notice | WatchOrdersReply | WatchTickerReply | Gap:
        """Decode line ``row + 2`` back into its message."""
        lt = int(self.line_type[row])
        if lt == LT_BOOK:
            e = self.events[row]
            return _notice_from_values(self.markets[int(self.market[row])].codes,
                                       *(int(e[k]) for k in _BOOK_COLUMNS))
        if lt == LT_SNAPSHOT:
            k = int(np.searchsorted(self.snap_rows, row))
            return self.snapshot(k)
        env = _ENVELOPE.decode(self.raw_line(row))
        if lt == LT_TICKER:
            reply = CODEC.decode_reply(bytes(env.m), WatchTickerReply)
            assert isinstance(reply, WatchTickerReply)
            return reply
        if lt == LT_GAP:
            assert isinstance(env.gap, str)
            mk = env.market
            return Gap(env.gap, None if isinstance(mk, UnsetType) else market_by_name(mk))
        try:
            return CODEC.decode_notice(env.m)
        except UnknownNotice:
            return _UnknownNoticeStandIn(raw=bytes(env.m))

    def lines(self, start: int = 0, stop: int | None = None) -> Iterator[Line]:
        """Decoded lines ``start + 2`` .. (slow path; replays use the arrays)."""
        markets = self.markets
        mk = self.market
        t = self.events["recv_time"]
        for row in range(start, len(self) if stop is None else stop):
            m = int(mk[row])
            yield Line(row, int(t[row]), markets[m] if m >= 0 else None, int(self.line_type[row]), self.message(row))

    def jsonl_lines(self) -> Iterator[bytes]:
        """The JSONL text, line by line (no newlines): the header, then every row."""
        yield self.header.to_json()
        names = self.header.markets
        codes = [m.codes for m in self.markets]
        lt_arr, mk_arr = self.line_type.tolist(), self.market.tolist()
        t_arr = self.events["recv_time"].tolist()
        cols = [self.events[k].tolist() for k in _BOOK_COLUMNS]
        offs = self.raw_offsets.tolist()
        raw = self.raw
        enc = CODEC.encode
        snap_k = 0
        for row, (lt, mk, t, *values) in enumerate(zip(lt_arr, mk_arr, t_arr, *cols, strict=True)):
            if lt == LT_BOOK:  # _notice_line, inlined (a million rows)
                yield b'{"t":%d,"m":%s}' % (t, enc(_notice_from_values(codes[mk], *values)))
            elif lt == LT_SNAPSHOT:
                yield _reply_line(t, names[mk], "WatchOrders", self.snapshot(snap_k))
                snap_k += 1
            else:
                yield raw[offs[row] : offs[row + 1]]

    def book_events(self, market: Market | str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, events): the book notices of one market, in order, as a contiguous
        EVENT_DTYPE array ready for :func:`engine.state.book.apply_batch`."""
        i = self.market_index(market)
        ev = self.events
        rows = np.flatnonzero((self.market == i) & (ev["kind"] != EV_OTHER))
        return rows, np.ascontiguousarray(ev[rows])


class _UnknownNoticeStandIn(Notice, tag="_Unknown", frozen=True, kw_only=True):
    """A notice type this version does not know (kept verbatim, ignored by replays)."""

    raw: bytes


_BOOK_COLUMNS = ("kind", "flags", "id", "price", "quantity", "remaining", "ask_id", "ask_remaining", "total",
                 "exch_time")


def _notice_from_values(codes: tuple[int, int], kind: int, f: int, oid: int, price: int, quantity: int,
                        rem: int, ask: int, ask_rem: int, total: int, time: int) -> Notice:
    """The public book notice of one ``events`` row (the inverse of events._row)."""
    base, counter = codes
    if kind == EV_OPEN:
        return OrderOpened(id=oid, base=base, counter=counter, quantity=quantity, price=price, time=time)
    if kind == EV_CLOSE:
        return OrderClosed(id=oid, base=base, counter=counter, quantity=quantity, price=price)
    if kind == EV_MATCH:
        kw: dict[str, Any] = {}
        if f & EVF_HAS_BID:
            kw["bid"] = oid
            if rem >= 0:
                kw["bid_rem"] = rem
        if f & EVF_HAS_ASK:
            kw["ask"] = ask
            if ask_rem >= 0:
                kw["ask_rem"] = ask_rem
        return OrdersMatched(base=base, counter=counter, quantity=quantity, price=price, total=total, time=time, **kw)
    raise ValueError(f"row kind {kind} is not a book notice")


# ---------------------------------------------------------------------------------------
# Reading JSONL


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    t: Int64
    m: msgspec.Raw = msgspec.Raw()
    market: str | UnsetType = UNSET
    reply: str | UnsetType = UNSET
    gap: str | UnsetType = UNSET


class _NoticeLine(msgspec.Struct, forbid_unknown_fields=True):
    """The fast path: ``{"t": .., "m": <a known notice>}``."""

    t: Int64
    m: Union[NOTICES]  # type: ignore[valid-type]  # noqa: UP007 - a tuple of types


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_FAST = msgspec.json.Decoder(_NoticeLine)
_OWN_KINDS = (OrderOpened, OrderClosed, OrdersMatched)


class _Builder:
    """Accumulates rows while a JSONL file is parsed."""

    def __init__(self, header: Header, source: str) -> None:
        self.header = header
        self.source = source
        self.codes = {m.codes: i for i, m in enumerate(header.market_objects)}
        self.names = {name: i for i, name in enumerate(header.markets)}
        self.rows: list[tuple[int, ...]] = []
        self.chunks: list[np.ndarray] = []  # rows already packed (keeps peak memory low)
        self.count = 0
        self.market: list[int] = []
        self.ltype: list[int] = []
        self.raw: list[bytes] = []
        self.raw_len: list[int] = []
        self.snap_rows: list[int] = []
        self.snap_tags: list[int] = []
        self.snap_orders: list[list[BookOrder]] = []
        self.last_exch = 0

    def err(self, lineno: int, msg: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.source}:{lineno}: {msg}")

    def _market_of(self, lineno: int, n: Notice) -> int:
        base = getattr(n, "base", None)
        if base is None:
            return -1  # BalanceChanged, TradeVolumeChanged, Welcome
        i = self.codes.get((base, n.counter))  # type: ignore[attr-defined]
        if i is None:
            try:
                name = market_by_codes(base, n.counter).name  # type: ignore[attr-defined]
            except ScaleError:
                name = f"{base}/{n.counter}"  # type: ignore[attr-defined]
            raise self.err(lineno, f"{type(n).__name__} for {name}, which the header does not list "
                                   f"{list(self.header.markets)}")
        return i

    def add_notice(self, lineno: int, t: int, n: Notice, line: bytes) -> None:
        if type(n) is OrdersMatched:
            assert isinstance(n, OrdersMatched)
            # The columns cannot hold a remainder without its order (IMPL-GUIDE pairs them).
            if n.bid is UNSET and n.bid_rem is not UNSET or n.ask is UNSET and n.ask_rem is not UNSET:
                raise self.err(lineno, "OrdersMatched has 'bid_rem'/'ask_rem' without its 'bid'/'ask'")
        row = _event_row(n, self.last_exch)
        self.last_exch = row[0]
        self._append((row[0], t) + row[1:])
        self.market.append(self._market_of(lineno, n))
        if type(n) in _OWN_KINDS:
            own = row[-1] & (EVF_OWN | EVF_OWN_ASK)
            self._type(LT_OWN if own else LT_BOOK, line if own else b"")
        else:
            self._type(LT_NOTICE, line)

    def _type(self, lt: int, raw: bytes) -> None:
        self.ltype.append(lt)
        self.raw.append(raw)
        self.raw_len.append(len(raw))

    def _append(self, row: tuple[int, ...]) -> None:
        rows = self.rows
        rows.append(row)
        self.count += 1
        if len(rows) == 65536:
            self.chunks.append(np.array(rows, dtype=EVENT_DTYPE))
            rows.clear()

    def add_other(self, lineno: int, t: int, market: int, lt: int, line: bytes) -> None:
        self._append((self.last_exch, t, 0, 0, 0, 0, 0, 0, 0, EV_OTHER, 0))
        self.market.append(market)
        self._type(lt, b"" if lt == LT_SNAPSHOT else line)

    def add_line(self, lineno: int, line: bytes) -> None:
        try:
            fast = _FAST.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError):
            fast = None
        if fast is not None:
            self.add_notice(lineno, fast.t, fast.m, line)
            return
        try:
            env = _ENVELOPE.decode(line)
        except msgspec.ValidationError as e:
            raise self.err(lineno, f"bad line: {e}") from None
        except msgspec.DecodeError as e:
            raise self.err(lineno, f"not JSON: {e}") from None
        t = env.t
        if not isinstance(env.gap, UnsetType):
            if len(env.m) or not isinstance(env.reply, UnsetType):
                raise self.err(lineno, "a gap line has only 't', 'gap' and optionally 'market'")
            self.add_other(lineno, t, self._named(lineno, env.market, optional=True), LT_GAP, line)
            return
        if not len(env.m):
            raise self.err(lineno, "the line has no message 'm' (and is not a 'gap')")
        if isinstance(env.reply, UnsetType):
            if not isinstance(env.market, UnsetType):
                raise self.err(lineno, "a notice line has only 't' and 'm' (the notice names its market)")
            try:
                n = CODEC.decode_notice(env.m)
            except UnknownNotice:
                # A notice type from a newer protocol: kept verbatim, replays ignore it (B2).
                self.add_other(lineno, t, -1, LT_NOTICE, line)
                return
            except RemoteProtocolError as e:
                raise self.err(lineno, f"{e}" + (f" at {e.field}" if e.field else "")) from None
            self.add_notice(lineno, t, n, line)
            return
        lt = _REPLY_KINDS.get(env.reply)
        if lt is None:
            raise self.err(lineno, f"'reply' must be \"WatchOrders\" or \"WatchTicker\", was {env.reply!r}")
        mi = self._named(lineno, env.market, optional=False)
        rtype = WatchOrdersReply if lt == LT_SNAPSHOT else WatchTickerReply
        try:
            reply = CODEC.decode_reply(bytes(env.m), rtype)
        except RemoteProtocolError as e:
            raise self.err(lineno, f"{env.reply} reply: {e}" + (f" at {e.field}" if e.field else "")) from None
        if isinstance(reply, ErrorReply):
            raise self.err(lineno, f"{env.reply} reply is an error ({reply.error_code}: {reply.error_msg}); "
                                   "only success replies belong in a recording")
        if lt == LT_SNAPSHOT:
            assert isinstance(reply, WatchOrdersReply)
            if reply.orders is UNSET:
                raise self.err(lineno, "WatchOrders reply without 'orders' (was watch false?)")
            self.snap_rows.append(self.count)
            self.snap_tags.append(0 if isinstance(reply.tag, UnsetType) else reply.tag)
            self.snap_orders.append(reply.orders)
        self.add_other(lineno, t, mi, lt, line)

    def _named(self, lineno: int, name: str | UnsetType, *, optional: bool) -> int:
        if isinstance(name, UnsetType):
            if optional:
                return -1
            raise self.err(lineno, "a reply line needs 'market' (replies do not name their market)")
        i = self.names.get(name)
        if i is None:
            try:
                i = self.names.get(market_by_name(name).name)
            except ScaleError:
                i = None
            if i is None:
                raise self.err(lineno, f"market {name!r} is not in the header {list(self.header.markets)}")
        return i

    def build(self) -> Recording:
        if self.rows:
            self.chunks.append(np.array(self.rows, dtype=EVENT_DTYPE))
            self.rows.clear()
        events = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=EVENT_DTYPE)
        n = len(events)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.array(self.raw_len, dtype=np.int64), out=offsets[1:])
        counts = [len(o) for o in self.snap_orders]
        snap_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(np.array(counts, dtype=np.int64), out=snap_offsets[1:])
        snap = np.zeros(int(snap_offsets[-1]), dtype=SNAP_DTYPE)
        if len(snap):
            flat = [(o.id, o.quantity, o.price, o.time) for orders in self.snap_orders for o in orders]
            snap = np.array(flat, dtype=SNAP_DTYPE)
        return Recording(
            header=self.header,
            events=events,
            market=np.array(self.market, dtype=np.int8),
            line_type=np.array(self.ltype, dtype=np.uint8),
            raw=b"".join(self.raw),
            raw_offsets=offsets,
            snap_rows=np.array(self.snap_rows, dtype=np.int64),
            snap_tags=np.array(self.snap_tags, dtype=np.int64),
            snap_offsets=snap_offsets,
            snap_orders=snap,
            source=self.source,
        )


def read_jsonl(path: str | Path) -> Recording:
    """Parse a ``cftrade-rec/1`` JSONL file into columns.  Raises RemoteProtocolError naming
    ``file:line`` for anything that is not a well-formed line (semantic checks: :func:`validate`)."""
    p = Path(path)
    with p.open("rb") as fh:
        return _read_jsonl_stream(fh, str(p))


def _read_jsonl_stream(fh: Iterable[bytes], source: str) -> Recording:
    it = iter(fh)
    first = next(it, None)
    if first is None or not first.strip():
        raise RemoteProtocolError(f"{source}:1: empty file (expected the cftrade-rec/1 header)")
    header = Header.from_json(first, f"{source}:1")
    b = _Builder(header, source)
    add = b.add_line
    for lineno, line in enumerate(it, 2):
        body = line.rstrip(b"\r\n")
        if not body.strip():
            raise RemoteProtocolError(f"{source}:{lineno}: blank line (every line after the header is a message)")
        add(lineno, body)
    return b.build()


# ---------------------------------------------------------------------------------------
# npz


def save_npz(rec: Recording, path: str | Path, *, compress: bool = False) -> None:
    """Write the columnar form (``numpy.savez``; no pickled objects).  Written to a
    temporary name and renamed, so a reader never sees half a file."""
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    arrays = {
        "header": np.frombuffer(rec.header.to_json(), dtype=np.uint8),
        "events": rec.events,
        "market": rec.market,
        "line_type": rec.line_type,
        "raw": np.frombuffer(rec.raw, dtype=np.uint8),
        "raw_offsets": rec.raw_offsets,
        "snap_rows": rec.snap_rows,
        "snap_tags": rec.snap_tags,
        "snap_offsets": rec.snap_offsets,
        "snap_orders": rec.snap_orders,
    }
    with tmp.open("wb") as fh:
        if compress:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        else:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, p)


def read_npz(path: str | Path) -> Recording:
    """Read the columnar form, checking every array's dtype and length."""
    p = Path(path)
    src = str(p)
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise RemoteProtocolError(f"{src}: not a readable .npz recording ({e})") from None
    with z:
        need = ("header", "events", "market", "line_type", "raw", "raw_offsets", "snap_rows", "snap_tags",
                "snap_offsets", "snap_orders")
        missing = [k for k in need if k not in z.files]
        if missing:
            raise RemoteProtocolError(f"{src}: not a cftrade recording (missing arrays {missing})")
        header = Header.from_json(z["header"].tobytes(), f"{src}: header")
        rec = Recording(
            header=header,
            events=z["events"],
            market=z["market"],
            line_type=z["line_type"],
            raw=z["raw"].tobytes(),
            raw_offsets=z["raw_offsets"],
            snap_rows=z["snap_rows"],
            snap_tags=z["snap_tags"],
            snap_offsets=z["snap_offsets"],
            snap_orders=z["snap_orders"],
            source=src,
        )
    _check_columns(rec)
    return rec


def _check_columns(rec: Recording) -> None:
    src = rec.source
    n = len(rec.events)

    def bad(msg: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{src}: {msg}")

    if rec.events.dtype != EVENT_DTYPE or rec.events.ndim != 1:
        raise bad(f"'events' must be a 1-d EVENT_DTYPE array, got {rec.events.dtype}")
    for name, dt, length in (("market", np.int8, n), ("line_type", np.uint8, n), ("raw_offsets", np.int64, n + 1),
                             ("snap_tags", np.int64, len(rec.snap_rows)), ("snap_rows", np.int64, None),
                             ("snap_offsets", np.int64, len(rec.snap_rows) + 1)):
        a = getattr(rec, name)
        if a.dtype != dt or a.ndim != 1 or (length is not None and len(a) != length):
            raise bad(f"'{name}' must be {np.dtype(dt)}[{length if length is not None else 'k'}], "
                      f"got {a.dtype}[{len(a)}]")
    if rec.snap_orders.dtype != SNAP_DTYPE:
        raise bad(f"'snap_orders' must be {SNAP_DTYPE}, got {rec.snap_orders.dtype}")
    if n and (rec.line_type.max() > LT_GAP or rec.market.min() < -1 or rec.market.max() >= len(rec.header.markets)):
        raise bad("'line_type' or 'market' holds values out of range")
    offs = rec.raw_offsets
    if n and (offs[0] != 0 or offs[-1] != len(rec.raw) or np.any(np.diff(offs) < 0)):
        raise bad("'raw_offsets' must rise from 0 to the length of 'raw'")
    has_raw = np.diff(offs) > 0
    should = np.isin(rec.line_type, _RAW_TYPES)
    if np.any(has_raw != should):
        i = int(np.argmax(has_raw != should))
        raise bad(f"line {i + 2}: raw text {'missing' if should[i] else 'unexpected'} for line type {rec.line_type[i]}")
    snaps = np.flatnonzero(rec.line_type == LT_SNAPSHOT)
    if not np.array_equal(snaps, rec.snap_rows):
        raise bad("'snap_rows' does not list exactly the snapshot rows")
    so = rec.snap_offsets
    if so[0] != 0 or so[-1] != len(rec.snap_orders) or np.any(np.diff(so) < 0):
        raise bad("'snap_offsets' must rise from 0 to the number of snapshot orders")
    book = rec.line_type <= LT_OWN
    kinds = rec.events["kind"]
    if np.any(book != (kinds != EV_OTHER)) or np.any(book & (rec.market < 0)):
        i = int(np.argmax((book != (kinds != EV_OTHER)) | (book & (rec.market < 0))))
        raise bad(f"line {i + 2}: line type {rec.line_type[i]} disagrees with event kind {kinds[i]} or market")


# ---------------------------------------------------------------------------------------
# Loading, writing, converting


def _is_npz(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def load(path: str | Path, *, check: bool = True) -> Recording:
    """Read a recording in either form (by content, not by name).  With ``check`` (the
    default) :func:`validate` runs too and any problem raises RemoteProtocolError."""
    p = Path(path)
    try:
        rec = read_npz(p) if _is_npz(p) else read_jsonl(p)
    except FileNotFoundError:
        raise RemoteProtocolError(f"{p}: no such recording") from None
    if check:
        validate(rec).raise_for_problems()
    return rec


def write_jsonl(rec: Recording, path: str | Path) -> None:
    """Write the JSONL form of a recording (temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    with tmp.open("wb") as fh:
        buf: list[bytes] = []
        for line in rec.jsonl_lines():
            buf.append(line)
            if len(buf) >= 8192:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
    os.replace(tmp, p)


def convert(src: str | Path, dst: str | Path, *, check: bool = True, compress: bool = False) -> Recording:
    """Convert between the forms; the target form follows ``dst``'s suffix (``.npz`` or
    anything else for JSONL).  Returns the recording."""
    rec = load(src, check=check)
    if str(dst).endswith(".npz"):
        save_npz(rec, dst, compress=compress)
    else:
        write_jsonl(rec, dst)
    return rec


# ---------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(slots=True)
class ValidationReport:
    """What :func:`validate` found.  ``problems`` are errors (at most ``limit`` kept,
    ``problem_count`` counts all); the counters describe the recording."""

    source: str
    lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    unknown_refs: int = 0
    """Closes/matches naming an order outside the top-N snapshot (IMPL-GUIDE: ignored)."""
    takers: int = 0
    """Ids first seen as the aggressor of a match (the crossing part of a limit order)."""
    unsnapshotted: int = 0
    """Book notices after the last gap (or the start) of a market that never got a snapshot."""
    first_t: int | None = None
    last_t: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def raise_for_problems(self, show: int = 5) -> None:
        if self.ok:
            return
        shown = "; ".join(str(p) for p in self.problems[:show])
        more = self.problem_count - min(show, len(self.problems))
        tail = f" (and {more} more)" if more > 0 else ""
        raise RemoteProtocolError(f"{self.source}: {self.problem_count} problem(s): {shown}{tail}")

    def summary(self) -> dict[str, Any]:
        span = (self.last_t - self.first_t) / 1e6 if self.first_t is not None and self.last_t is not None else 0.0
        return {
            "source": self.source, "lines": self.lines, "ok": self.ok, "problems": self.problem_count,
            "first_problems": [str(p) for p in self.problems[:10]], "counts": dict(self.counts),
            "unknown_refs": self.unknown_refs, "takers": self.takers, "unsnapshotted": self.unsnapshotted,
            "seconds": round(span, 6),
        }


class _MarketState:
    __slots__ = ("view", "ready", "pending", "full", "last_exch")

    def __init__(self) -> None:
        self.view: dict[int, list[int]] = {}  # id -> [signed remaining, price]
        self.ready = False
        self.pending: list[int] = []
        self.full = (False, False)
        self.last_exch = -(2**63)


def validate(rec: Recording, *, limit: int = 1000) -> ValidationReport:
    """Check a recording's consistency; every problem names its line (row + 2).

    * receive times ``t`` never decrease; exchange times (OrderOpened/OrdersMatched
      ``time``) never decrease within a market;
    * a snapshot has unique ids, non-zero quantities, positive prices and is not crossed,
      and names no order an earlier line closed;
    * every OrderOpened id is new (not open, not opened or closed before), with a
      non-zero quantity and a positive price;
    * OrderClosed and OrdersMatched name orders of the book with the right side, price
      and quantities (ask_rem = remaining - quantity; bid_rem <= remaining - quantity since
      the buyer's fee comes out of the bid's reservation; OrderClosed quantity = remaining);
      an unknown id is accepted only if the snapshot of that side was full (the top-N rule
      of IMPL-GUIDE; counted in ``unknown_refs``) or it is a new id taking liquidity;
    * OrdersMatched has a positive quantity and price, a non-negative total, at least one
      side, and ``bid_rem``/``ask_rem`` exactly when ``bid``/``ask`` is present.

    Notices that arrive before a market's snapshot are checked after it (IMPL-GUIDE
    buffering); a gap line forgets the market's book until its next snapshot.
    """
    report = ValidationReport(rec.source, len(rec) + 1)
    problems = report.problems
    depth = rec.header.watch_depth

    def problem(row: int, msg: str) -> None:
        report.problem_count += 1
        if len(problems) < limit:
            problems.append(Problem(row + 2, msg))

    ev = rec.events
    n = len(ev)
    cols = {k: ev[k].tolist() for k in ("exch_time", "recv_time", "id", "price", "quantity", "remaining",
                                        "ask_id", "ask_remaining", "total", "kind", "flags")}
    xt, rt, ids, px, qty = cols["exch_time"], cols["recv_time"], cols["id"], cols["price"], cols["quantity"]
    rem, aid, arem, tot, kind, flags = (cols["remaining"], cols["ask_id"], cols["ask_remaining"], cols["total"],
                                        cols["kind"], cols["flags"])
    mk = rec.market.tolist()
    lt = rec.line_type.tolist()
    states = [_MarketState() for _ in rec.header.markets]
    opened: dict[int, int] = {}  # id -> line it was opened or first snapshotted on
    closed: dict[int, int] = {}  # id -> line it was closed on
    takers: dict[int, int] = {}  # id -> signed remaining after its last match as aggressor
    max_id = -(2**63)
    snap_k = 0
    counts: dict[str, int] = {}
    if n:
        report.first_t, report.last_t = rt[0], rt[-1]

    def unknown(row: int, oid: int, side: int | None, what: str) -> None:
        """An id not in the view: a deep order (side of a full snapshot) or an error."""
        if oid in closed:
            problem(row, f"{what} names order {oid}, closed on line {closed[oid]}")
            return
        st = states[mk[row]]
        full = st.full[side] if side is not None else (st.full[0] or st.full[1])
        if full:
            report.unknown_refs += 1
        else:
            sname = {0: "bid", 1: "ask", None: "either"}[side]
            problem(row, f"{what} names order {oid}, which is not in the book (the {sname} side "
                         f"of the snapshot was not full, so every resting order was in it)")

    def book_row(row: int) -> None:
        nonlocal max_id
        st = states[mk[row]]
        view = st.view
        k = kind[row]
        oid = ids[row]
        if k == EV_OPEN:
            q, p = qty[row], px[row]
            if q == 0 or p <= 0:
                problem(row, f"OrderOpened {oid} with quantity {q} and price {p} (need quantity != 0, price > 0)")
            if xt[row] < st.last_exch:
                problem(row, f"exchange time went backwards: {xt[row]} after {st.last_exch}")
            st.last_exch = max(st.last_exch, xt[row])
            if oid in view or oid in opened or oid in closed:
                first = opened.get(oid, closed.get(oid))
                problem(row, f"OrderOpened {oid}: the id is not new (seen on line {first})")
            elif oid in takers:
                left = takers.pop(oid)
                if left != q:
                    problem(row, f"OrderOpened {oid} rests {q}, but its matches left {left}")
            view[oid] = [q, p]
            opened[oid] = row + 2
            max_id = max(max_id, oid)
        elif k == EV_CLOSE:
            q, p = qty[row], px[row]
            o = view.pop(oid, None)
            if o is None:
                if oid in takers:
                    left = takers.pop(oid)
                    if abs(left) != abs(q):
                        problem(row, f"OrderClosed {oid} closes {q}, but its matches left {left}")
                else:
                    unknown(row, oid, None if q == 0 else (0 if q > 0 else 1), "OrderClosed")
            else:
                if (o[0] > 0 and q < 0) or (o[0] < 0 and q > 0):
                    problem(row, f"OrderClosed {oid} quantity {q} has the wrong sign for the order ({o[0]})")
                elif q != o[0]:
                    problem(row, f"OrderClosed {oid} quantity {q} differs from its remaining {o[0]}")
                if p != o[1]:
                    problem(row, f"OrderClosed {oid} price {p} differs from the order's price {o[1]}")
            closed.setdefault(oid, row + 2)
        else:  # EV_MATCH
            f = flags[row]
            q, p = qty[row], px[row]
            if q <= 0 or p <= 0 or tot[row] < 0:
                problem(row, f"OrdersMatched with quantity {q}, price {p}, total {tot[row]} "
                             "(need quantity > 0, price > 0, total >= 0)")
            if xt[row] < st.last_exch:
                problem(row, f"exchange time went backwards: {xt[row]} after {st.last_exch}")
            st.last_exch = max(st.last_exch, xt[row])
            if not f & (EVF_HAS_BID | EVF_HAS_ASK):
                problem(row, "OrdersMatched names neither a bid nor an ask")
            for has, side, sid, srem, name in ((EVF_HAS_BID, 0, oid, rem[row], "bid"),
                                               (EVF_HAS_ASK, 1, aid[row], arem[row], "ask")):
                if not f & has:
                    continue
                if srem < 0:
                    problem(row, f"OrdersMatched has '{name}' {sid} but no '{name}_rem'")
                    continue
                o = view.get(sid)
                if o is None:
                    if sid in takers or sid > max_id:
                        if sid not in takers:
                            report.takers += 1
                        takers[sid] = srem if side == 0 else -srem
                        max_id = max(max_id, sid)
                    else:
                        unknown(row, sid, side, f"OrdersMatched {name}")
                    continue
                if (o[0] < 0) if side == 0 else (o[0] > 0):
                    problem(row, f"OrdersMatched {name} {sid} is {'an ask' if side == 0 else 'a bid'} in the book")
                    continue
                before = abs(o[0])
                if side == 1 and srem != before - q:
                    problem(row, f"ask_rem {srem} != remaining {before} - traded {q} for ask {sid}")
                elif side == 0 and srem > before - q:
                    problem(row, f"bid_rem {srem} > remaining {before} - traded {q} for bid {sid}")
                o[0] = srem if side == 0 else -srem

    for row in range(n):
        if row and rt[row] < rt[row - 1]:
            problem(row, f"receive time went backwards: {rt[row]} after {rt[row - 1]} on line {row + 1}")
        t = lt[row]
        k = kind[row]
        if k != EV_OTHER:
            name = ("", "OrderOpened", "OrderClosed", "OrdersMatched")[k]
            counts[name] = counts.get(name, 0) + 1
            if t == LT_OWN:
                counts["own"] = counts.get("own", 0) + 1
            st = states[mk[row]]
            if st.ready:
                book_row(row)
            else:
                st.pending.append(row)
            continue
        if t == LT_SNAPSHOT:
            counts["snapshots"] = counts.get("snapshots", 0) + 1
            st = states[mk[row]]
            _load_snapshot(rec, snap_k, row, st, opened, closed, depth, problem)
            ids_k = rec.snapshot_arrays(snap_k)["id"]
            if len(ids_k):
                max_id = max(max_id, int(ids_k.max()))
            snap_k += 1
            st.ready = True
            pending, st.pending = st.pending, []
            for r in pending:
                book_row(r)
        elif t == LT_GAP:
            counts["gaps"] = counts.get("gaps", 0) + 1
            m = mk[row]
            for i, st in enumerate(states):
                if m < 0 or m == i:
                    report.unsnapshotted += len(st.pending)
                    states[i] = _MarketState()
        elif t == LT_TICKER:
            counts["ticker_replies"] = counts.get("ticker_replies", 0) + 1
        else:
            counts["other_notices"] = counts.get("other_notices", 0) + 1
    for st in states:
        report.unsnapshotted += len(st.pending)
    report.counts = counts
    return report


def _load_snapshot(rec: Recording, k: int, row: int, st: _MarketState, opened: dict[int, int],
                   closed: dict[int, int], depth: int, problem: Any) -> None:
    o = rec.snapshot_arrays(k)
    ids, q, p = o["id"].tolist(), o["quantity"].tolist(), o["price"].tolist()
    view: dict[int, list[int]] = {}
    bids = asks = 0
    best_bid, best_ask = None, None
    for oid, qq, pp in zip(ids, q, p, strict=True):
        if oid in view:
            problem(row, f"snapshot lists order {oid} twice")
        if qq == 0 or pp <= 0:
            problem(row, f"snapshot order {oid} has quantity {qq} and price {pp}")
        if oid in closed:
            problem(row, f"snapshot lists order {oid}, closed on line {closed[oid]}")
        if qq > 0:
            bids += 1
            best_bid = pp if best_bid is None else max(best_bid, pp)
        elif qq < 0:
            asks += 1
            best_ask = pp if best_ask is None else min(best_ask, pp)
        view[oid] = [qq, pp]
        opened.setdefault(oid, row + 2)
    if best_bid is not None and best_ask is not None and best_bid >= best_ask:
        problem(row, f"snapshot is crossed: best bid {best_bid} >= best ask {best_ask}")
    st.view = view
    st.full = (bids >= depth, asks >= depth)


# ---------------------------------------------------------------------------------------
# Replaying a book


def replay_book(rec: Recording, market: Market | str, *, stop_row: int | None = None) -> Book:
    """The local book of ``market`` after the recording (or before row ``stop_row``), built
    exactly as a live client would: snapshot, buffered early notices, then every notice
    (in compiled batches between snapshots and gaps)."""
    i = rec.market_index(market)
    m = rec.markets[i]
    book = Book(m, scales=rec.header.scales)
    end = len(rec) if stop_row is None else stop_row
    lt, mk = rec.line_type[:end], rec.market[:end]
    # Rows that re-base the book: this market's snapshots and gaps (its own or global).
    cuts = np.flatnonzero(((lt == LT_SNAPSHOT) & (mk == i)) | ((lt == LT_GAP) & ((mk == i) | (mk == -1))))
    kinds = rec.events["kind"][:end]
    mine = (mk == i) & (kinds != EV_OTHER)
    snap_index = {int(r): k for k, r in enumerate(rec.snap_rows.tolist())}
    cut_set = set(cuts.tolist())
    bounds = sorted({0, *cut_set, end})
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a in cut_set:
            if lt[a] == LT_SNAPSHOT:
                o = rec.snapshot_arrays(snap_index[a])
                book.load_arrays(o["id"].copy(), o["quantity"].copy(), o["price"].copy(), o["time"].copy())
            else:
                book.reset()
            a += 1
        rows = np.flatnonzero(mine[a:b]) + a
        if not len(rows):
            continue
        if book.ready:
            apply_batch(book, np.ascontiguousarray(rec.events[rows]))
        else:
            for r in rows.tolist():  # before any snapshot: buffered, as IMPL-GUIDE says
                book.apply(rec.message(r))  # type: ignore[arg-type]
    return book


def _stream(lines: Sequence[bytes], source: str = "<lines>") -> Recording:
    """Parse in-memory JSONL lines (tests, converters)."""
    return _read_jsonl_stream(io.BytesIO(b"\n".join(lines) + b"\n"), source)
