"""Replay a recorded market through the very same strategies, state and risk code as live.

::

    result = run_backtest("configs/market_maker.yaml", "recordings/day.jsonl", ReplayOptions(seed=1))
    result.fills, result.summary, result.final_hash

**How a replay works.**  A real :class:`engine.exchange.core.Exchange` is built from the
config's exchange settings (the embedded exchange's users, balances, fee tiers, API
version), plus two users that stand for the recorded market:

* the **recorded makers** (user ``M``): every order the recording shows resting -- the
  first ``WatchOrders`` snapshot, then every ``OrderOpened`` of another user -- is placed as
  a limit order of ``M`` at the recorded price and quantity, in recorded order, so the
  replayed book holds the recorded orders in the *same FIFO order* at each price.  A
  recorded ``OrderClosed`` (a cancel, or the end of a fill) cancels the replayed order if
  it is still there.  Recorded ids are mapped to replay ids.  A copy pays the replay's
  fees and rounding draws, not the participant's, so after each re-sent trade that
  reached it in full it is set to the recorded remaining (``bid_rem``/``ask_rem``, with
  the reservation that goes with it: :meth:`Exchange.set_remaining`), and a bid copy is
  reserved enough for that fill that its fee cannot cut it: otherwise it would keep a
  few units more or less than the participant did and pass them on to the next order in
  the queue -- sometimes ours.
* the **recorded takers** (user ``T``): the aggressive side of every recorded
  ``OrdersMatched`` (the side without an order id, or whose order was not resting: it
  arrived later) is re-sent as an order of ``T`` for the traded quantity, never beyond
  the traded price: a buy is a market order for at most the quantity resting at or below
  that price, a sell a limit order at that price (a remainder that would rest is
  cancelled at once and hidden from the strategy's feed).  The flow therefore trades
  against whatever is *now* first in the queue -- possibly the strategy's order, if it
  sits at a better price or earlier in the queue.

The strategy is a :class:`engine.runtime.TradingCore` driven exactly as
:mod:`engine.runner` drives it: an internal session of the strategy's user watches the
books and tickers of its markets, the start-up barrier runs GetBalances and GetOrders
first, notices and replies go to ``on_notice`` / ``on_place_reply`` / ``on_cancel_reply``,
intents leave through ``core.outbox`` and are sent in order through a LIMITS.md limiter
(the runner's transport governor at factor 1.0), timers fire at their virtual times, and
the risk governor reads the virtual clock.  So every fill of the strategy is matched,
charged (fee out of the bid reservation, stochastic rounding from the seeded rng) and
settled by the exchange core itself; the balance view is checked against the core at the
end, and the core's invariants (conservation included) too.

**Time.**  Virtual time is the recording's receive time (microseconds).  Three queues
drive it: recorded events, deliveries to the strategy (notices and replies, ``feed
latency`` after the exchange produced them) and command arrivals at the exchange (``order
latency`` after the strategy sent them), plus a heap of timers.  At equal times the order
is fixed -- recorded events, deliveries, arrivals, timers -- and each queue is FIFO, so the
same recording, config and seed always give the same fills and the same ``final_hash``.

**Own orders in a recording of a live run.**  Notices carrying a ``tonce`` key
(``bid_tonce`` / ``ask_tonce``) are the recording user's own orders: they are never
replayed as market flow, since the strategy re-creates them.  When a recorded trade's
maker was ours, its taker *is* replayed (it hits our replayed quote if that is where the
live one was); when its taker was ours, nothing is re-sent (our replayed order matches by
itself), and the recorded close of the maker it emptied waits for the end of that instant
(our replayed order, sent in reaction to notices of the same instant, may still take it).

**What the strategy sees** is its session's feed from the replay exchange, with two
corrections so that its hooks wake exactly as they did live: the stand-in taker orders
never appear (no OrderOpened/OrderClosed of ``T``'s orders; their trades show the recorded
taker's id, masked as below, and remaining, or no taker side for a recorded market
order), and a recorded OrderClosed of
an order that never rested (a taker filled on arrival) is passed through as recorded,
under an id no replay order has (the book ignores it, as it did live).

**Parity** (backtests/parity.py, ``cftrade diff``): replaying a recorded ``cftrade run``
with the same config and seed reproduces every live fill, total and fee to the unit, and
the same orders in the same order -- for the shipped market maker, TWAP, grid and
mean-reversion strategies over 10 virtual minutes, and over an hour with one fee tier.

**What cannot be reproduced** (the residue a parity diff shows): every trade of the
exchange draws from one stochastic-rounding stream, so trades the recording does not hold
(other markets' participants) or a different fee rate for the recorded users shift the
draws: totals and fees move by a unit, a bid's dust remainder appears or not, and a
strategy that reacts to the intermediate book states of one command takes another path.
The recorded users' stand-ins pay the first fee tier (``ReplayOptions.recorded_fees``:
each stands for many participants, each with its own 30-day volume), which is what a
fresh local exchange's participants pay until one of them trades 100 XBT: the demo market
maker is reproduced to the unit for an hour; at two hours the simulated takers cross that
tier (at ~3760 s) and the replay forks there (58 % of fills, PnL within 0.7 %).  Flow
that took our order in the replay was, live, taken by the recorded maker behind it, whose
replayed copy then holds more than the recording says until the recording closes it;
participants who reacted to our quotes live are replayed as recorded.

**Speed** (2 shared cores): about 20-60 k recorded events/s with the shipped market maker
(whose hooks and orders take most of the time) and 70-140 k/s with a strategy that only
watches; every recorded order goes through the exchange core, so this path cannot approach
2 M/s.  :class:`backtests.fast.FastReplay` (``run_backtest(..., fast=True)``, ``cftrade
backtest --fast``) applies recorded book events in compiled batches instead and is compared
with this path fill by fill, with either ``ReplayOptions.rounding`` (tests/test_replay_fast.py).

Rate limits: the replay exchange runs without its own rate limits (the recorded users
must never be throttled); the strategy's commands are held to LIMITS.md by the same
limiter the live runner's transport governor uses, and to the config's budgets by the
risk governor, so the strategy never sends anything the live exchange would refuse with
error 6.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from backtests.result import MARK_DTYPE, BacktestResult, FillRecord, final_hash
from engine.config import RunConfig, load_run_config
from engine.errors import ConfigError, RemoteProtocolError
from engine.exchange.rounding import PPM
from engine.limits import DEFAULT_LIMITS, make_limiter
from engine.protocol.codec import CODEC, ReplyFrame
from engine.protocol.messages import (
    UNSET,
    BookOrder,
    CancelOrder,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
)
from engine.risk import RiskGovernor
from engine.runtime import Outgoing, TradingCore
from engine.scale import Market, market_by_codes, market_by_name
from engine.state.events import (
    EV_CLOSE,
    EV_MATCH,
    EV_OPEN,
    EVF_HAS_ASK,
    EVF_HAS_BID,
    EVF_OWN,
    EVF_OWN_ASK,
    events_from_notices,
)
from engine.state.tonces import TonceAllocator
from engine.strategy import Strategy

__all__ = [
    "ReplayData",
    "ReplayOptions",
    "Replay",
    "Snapshot",
    "load_recording",
    "recorded_messages",
    "run_backtest",
    "replay_data_from_messages",
]

log = logging.getLogger("backtests.replay")

STRATEGY_USER_ID = 1
"""The strategy trades as this user of the replay exchange (the runner's embedded demo user)."""

_INF = 1 << 62
_SHUTDOWN_US = 5_000_000
_FOREIGN_ID = 1 << 62  # ids of passed-through notices: above any id the replay exchange gives
_ID_MASK = _FOREIGN_ID - 1  # the runner's shutdown deadline (RunOptions.shutdown_deadline)
_CHUNK = 1 << 16

# kinds of deliveries to the strategy
_D_NOTICE, _D_PLACE, _D_CANCEL, _D_SNAPSHOT, _D_BALANCES, _D_ORDERS, _D_START = range(7)
# kinds of timer-heap entries
_T_SUBSCRIBE, _T_TIMER, _T_MARK, _T_BOOK = range(4)


# ---------------------------------------------------------------------------------------
# The recording, decoded for replay


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A recorded WatchOrders reply: apply it before ``events[pos]`` at time ``t_us``."""

    pos: int
    t_us: int
    market: int
    """Index into :attr:`ReplayData.markets`."""
    reply: WatchOrdersReply


@dataclass
class ReplayData:
    """A recording decoded once, replayable many times (sweeps load it once per process).

    ``events`` holds the book notices (OrderOpened, OrderClosed, OrdersMatched) of every
    market as :data:`engine.state.events.EVENT_DTYPE` rows in receive order, with
    ``recv_time`` the virtual time; ``market`` gives each row's market (an index into
    ``markets``); ``snapshots`` are the WatchOrders replies, each placed before a row.
    Tickers, balances and other notices are only counted (``other_events``): the replay
    exchange makes its own.
    """

    source: str
    markets: list[Market]
    events: np.ndarray
    market: np.ndarray
    snapshots: list[Snapshot]
    other_events: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    other_times: np.ndarray | None = None
    """Receive times of the other messages (so a replay of a time window counts them)."""

    def events_until(self, rows: int, snapshots: int, t_us: int) -> int:
        """Recorded messages replayed when ``rows`` book events and ``snapshots`` snapshots
        were applied and the clock stopped at ``t_us``."""
        if self.other_times is None:
            other = self.other_events if rows >= len(self.events) else 0
        else:
            other = int(np.searchsorted(self.other_times, t_us, side="right"))
        return rows + snapshots + other

    @property
    def total_events(self) -> int:
        """Every recorded message: book notices, snapshots and the rest."""
        return len(self.events) + len(self.snapshots) + self.other_events

    @property
    def start_us(self) -> int:
        times = [s.t_us for s in self.snapshots]
        if len(self.events):
            times.append(int(self.events["recv_time"][0]))
        return min(times) if times else 0

    @property
    def end_us(self) -> int:
        times = [s.t_us for s in self.snapshots]
        if len(self.events):
            times.append(int(self.events["recv_time"][-1]))
        return max(times) if times else 0


RecordedMessage = tuple[int, Market | None, Notice | WatchOrdersReply]
"""(receive time µs, market (required for snapshots), the message as received)."""


def replay_data_from_messages(messages: Iterable[RecordedMessage], source: str = "<messages>",
                              header: dict[str, Any] | None = None) -> ReplayData:
    """Build :class:`ReplayData` from decoded messages in receive order.

    Raises RemoteProtocolError if time goes backwards or a snapshot names no market.
    """
    markets: list[Market] = []
    index: dict[tuple[int, int], int] = {}

    def market_index(m: Market) -> int:
        i = index.get(m.codes)
        if i is None:
            i = index[m.codes] = len(markets)
            markets.append(m)
        return i

    notices: list[Notice] = []
    times: list[int] = []
    where: list[int] = []
    snapshots: list[Snapshot] = []
    other_t: list[int] = []
    last_t = -_INF
    for n, (t, market, msg) in enumerate(messages, 1):
        if t < last_t:
            raise RemoteProtocolError(f"{source}: message {n}: receive time {t} goes backwards (previous {last_t})")
        last_t = t
        tp = type(msg)
        if tp is WatchOrdersReply:
            if market is None:
                raise RemoteProtocolError(f"{source}: message {n}: a WatchOrders snapshot must name its market")
            snapshots.append(Snapshot(len(notices), t, market_index(market), msg))  # type: ignore[arg-type]
        elif tp is OrderOpened or tp is OrderClosed or tp is OrdersMatched:
            m: Any = msg
            notices.append(msg)  # type: ignore[arg-type]
            times.append(t)
            where.append(market_index(market_by_codes(m.base, m.counter)))
        else:
            other_t.append(t)
    events = events_from_notices(notices, times)
    return ReplayData(source, markets, events, np.array(where, dtype=np.int8), snapshots, len(other_t), header or {},
                      np.array(other_t, dtype=np.int64))


class _Envelope(msgspec.Struct):
    t: int
    m: msgspec.Raw | None = None
    market: str | None = None
    reply: str | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                yield i, line


def _decode_message(raw: bytes, where: str, market: Market | None) -> Notice | WatchOrdersReply | None:
    try:
        frame = CODEC.decode_server_frame(raw)
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"{where}: {e}") from None
    if isinstance(frame, ReplyFrame):
        reply = CODEC.decode_reply(frame, WatchOrdersReply)
        if isinstance(reply, WatchOrdersReply) and reply.orders is not UNSET:
            return reply
        return None  # a WatchTicker reply, an unwatch, an error: nothing to replay
    return frame


def _recorded_messages(path: Path) -> tuple[dict[str, Any], Iterator[RecordedMessage]]:
    """The header (may be empty) and the messages of a JSONL recording.

    Two layouts are read: the cftrade recording format (a header line, then one
    ``{"t": µs, "market": "XBT:GBP", "m": <message as received>}`` per line; see
    docs/RECORDING.md), and the bare layout of :mod:`engine.state.events` (the WatchOrders
    reply, then notices, without receive times: each notice's exchange time stands in).
    """
    lines = _iter_jsonl(path)
    first = next(lines, None)
    if first is None:
        raise RemoteProtocolError(f"{path}: empty recording")
    n0, text0 = first
    try:
        obj0 = msgspec.json.decode(text0)
    except msgspec.DecodeError as e:
        raise RemoteProtocolError(f"{path}:{n0}: malformed JSON: {e}") from None
    if not isinstance(obj0, dict):
        raise RemoteProtocolError(f"{path}:{n0}: expected a JSON object")
    if "m" not in obj0 and "format" not in obj0:
        return {}, _bare_messages(path, n0, text0, lines)
    header: dict[str, Any] = {}
    if "format" in obj0:
        header = obj0
        fmt = str(obj0.get("format", ""))
        if not fmt.startswith("cftrade-rec/"):
            raise RemoteProtocolError(f"{path}:{n0}: unknown recording format {fmt!r}")

        def body() -> Iterator[RecordedMessage]:
            yield from _envelope_messages(path, lines)
    else:

        def body() -> Iterator[RecordedMessage]:
            yield from _envelope_messages(path, iter([(n0, text0)]))
            yield from _envelope_messages(path, lines)

    return header, body()


def _envelope_messages(path: Path, lines: Iterable[tuple[int, bytes]]) -> Iterator[RecordedMessage]:
    dec = _ENVELOPE.decode
    for i, text in lines:
        where = f"{path}:{i}"
        try:
            env = dec(text)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise RemoteProtocolError(f"{where}: not a recorded message ({e})") from None
        if env.m is None or env.reply == "WatchTicker":
            continue  # a gap marker (the next snapshot resynchronises) or a ticker reply
        market = None
        if env.market is not None:
            try:
                market = market_by_name(env.market)
            except Exception as e:
                raise RemoteProtocolError(f"{where}: {e}") from None
        msg = _decode_message(bytes(env.m), where, market)
        if msg is not None:
            yield env.t, market, msg


def _bare_messages(path: Path, n0: int, text0: bytes, lines: Iterator[tuple[int, bytes]]) -> Iterator[RecordedMessage]:
    snap = _decode_message(text0, f"{path}:{n0}", None)
    if not isinstance(snap, WatchOrdersReply):
        raise RemoteProtocolError(f"{path}:{n0}: expected the WatchOrders reply (the snapshot) first")
    rest: list[tuple[int, Notice]] = []
    market: Market | None = None
    for i, text in lines:
        msg = _decode_message(text, f"{path}:{i}", None)
        if isinstance(msg, WatchOrdersReply) or msg is None:
            raise RemoteProtocolError(f"{path}:{i}: a bare recording holds one snapshot, then notices")
        rest.append((i, msg))
        if market is None and isinstance(msg, OrderOpened | OrderClosed | OrdersMatched):
            market = market_by_codes(msg.base, msg.counter)
    if market is None:
        raise RemoteProtocolError(f"{path}: no book notice names the market of the snapshot")
    times = [0] * len(rest)
    last = max((o.time for o in snap.orders), default=0) if snap.orders is not UNSET else 0
    for k, (_, n) in enumerate(rest):
        t = getattr(n, "time", None)
        if isinstance(t, int) and t > last:
            last = t
        times[k] = last
    t0 = times[0] if times else last
    yield t0, market, snap
    for k, (_, n) in enumerate(rest):
        yield times[k], market, n


def load_recording(path: str | Path) -> ReplayData:
    """Read a recording file (JSONL or the columnar ``.npz``) for replay.

    The format is docs/RECORDING.md's (``cftrade-rec/1``), read and validated by
    :func:`backtests.recording.load` (time never goes backwards, ids are consistent, ...);
    the bare layout of :mod:`engine.state.events` (a snapshot line, then notices) is read
    too.  Raises RemoteProtocolError naming the file and line of the first problem.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"recording {p} does not exist")
    if _is_cftrade_recording(p):
        try:
            from backtests import recording
        except ImportError:  # pragma: no cover - the recording module ships with this one
            pass
        else:
            return replay_data_from_recording(recording.load(p))
    hdr, msgs = _recorded_messages(p)
    return replay_data_from_messages(msgs, str(p), hdr)


def recorded_messages(path: str | Path) -> list[RecordedMessage]:
    """Every message of a recording, decoded, in order (slow path: tools and parity, not
    replays).  Own-order notices keep their tonces and fees."""
    p = Path(path)
    if _is_cftrade_recording(p):
        try:
            from backtests import recording
        except ImportError:  # pragma: no cover
            pass
        else:
            rec = recording.load(p)
            return [(ln.t, ln.market, ln.message) for ln in rec.lines()
                    if isinstance(ln.message, WatchOrdersReply | Notice)]
    _, msgs = _recorded_messages(p)
    return list(msgs)


def _is_cftrade_recording(path: Path) -> bool:
    """An .npz (zip) file, or JSONL whose first line is a cftrade-rec header."""
    with path.open("rb") as fh:
        head = fh.readline(1 << 20)
    if head.startswith(b"PK\x03\x04"):
        return True
    try:
        obj = msgspec.json.decode(head)
    except msgspec.DecodeError:
        return False
    return isinstance(obj, dict) and str(obj.get("format", "")).startswith("cftrade-rec/")


def replay_data_from_recording(rec: Any) -> ReplayData:
    """Build :class:`ReplayData` from a :class:`backtests.recording.Recording` (columns:
    no JSON is decoded again, except the snapshots' orders)."""
    from backtests.recording import LT_BOOK, LT_OWN

    ev = rec.events
    lt = rec.line_type
    book = (ev["kind"] != 0) & ((lt == LT_BOOK) | (lt == LT_OWN))
    rows = np.flatnonzero(book)
    events = np.ascontiguousarray(ev[rows])
    market = np.ascontiguousarray(rec.market[rows]).astype(np.int8)
    snapshots = []
    times = ev["recv_time"]
    for k, row in enumerate(rec.snap_rows.tolist()):
        pos = int(np.searchsorted(rows, row))
        snapshots.append(Snapshot(pos, int(times[row]), int(rec.market[row]), rec.snapshot(k)))
    h = rec.header
    header = {**h.meta, "format": "cftrade-rec/1", "api_version": h.api_version, "markets": list(h.markets),
              "user_id": h.user_id}
    is_other = ~book
    is_other[rec.snap_rows] = False
    other_times = np.ascontiguousarray(times[is_other])
    return ReplayData(rec.source, list(rec.markets), events, market, snapshots, len(other_times), header, other_times)


# ---------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay.  Latencies are one-way, in microseconds of virtual time."""

    seed: int | None = None
    """Seeds the replay exchange's stochastic rounding; None: the config's ``run.seed``."""
    order_latency_us: int = 0
    """Strategy -> exchange: a command sent at t is executed at t + this."""
    feed_latency_us: int = 0
    """Exchange -> strategy: notices and replies produced at t are seen at t + this."""
    mark_interval_us: int = 1_000_000
    """Equity and position are sampled this often (and at every fill)."""
    start_us: int | None = None
    """The strategy subscribes at this time (earlier events only build the book)."""
    end_us: int | None = None
    """Recorded events after this time are not replayed; the strategy stops here."""
    exchange_config: str | None = None
    """Exchange YAML for users, balances and fees; None: the run config's embedded one."""
    progress: bool = False
    """Draw a progress bar on stderr."""
    tickers: bool | None = None
    """Watch the tickers as the runner does.  None: only if a strategy overrides
    ``on_ticker`` (the runtime uses ticker notices for nothing else: its last price also
    follows the trades), which saves the exchange building them."""
    check_invariants: bool = True
    """Run the exchange core's invariant checks (conservation, reservations) at the end."""
    rounding: str | None = None
    """Which stochastic-rounding stream a trade draws from; None: the path's own (the exact
    path ``"shared"``, the fast path ``"strategy"``).  ``"shared"``: one stream for
    every trade, as the live exchange does (so a recording of a one-market live run is
    reproduced to the unit).  ``"strategy"``: trades of the strategy's user draw from the
    stream seeded with ``seed``, trades among the recorded users from another one, so the
    strategy's totals and fees do not depend on how much recorded flow the replay re-trades
    -- what :class:`backtests.fast.FastReplay` does (it re-trades none), hence the setting
    to compare the two paths fill by fill."""

    recorded_fees: str = "first_tier"
    """What fee tier the stand-ins for the recorded users pay.  ``"first_tier"``: the tier of
    a user with no 30-day volume -- their replayed trades do not count as volume, since each
    stands for many participants, each with a volume of its own (a fresh local exchange's
    participants, the ones ``cftrade diff`` records, pay that tier until one of them trades
    the next tier's volume: 100 XBT in the demo schedule, about two hours of the simulated
    market).  ``"volume"``: they are two users whose volume is all the recorded volume, so
    they reach higher tiers far sooner than any participant did (pay the participants' fees
    only while everyone is in one tier)."""

    def __post_init__(self) -> None:
        if self.recorded_fees not in ("first_tier", "volume"):
            raise ConfigError(f"recorded_fees must be 'first_tier' or 'volume', was {self.recorded_fees!r}")
        if self.rounding not in (None, "shared", "strategy"):
            raise ConfigError(f"rounding must be 'shared' or 'strategy', was {self.rounding!r}")
        for name in ("order_latency_us", "feed_latency_us"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0 microseconds, was {v!r}")
        if isinstance(self.mark_interval_us, bool) or not isinstance(self.mark_interval_us, int) or self.mark_interval_us <= 0:
            raise ConfigError(f"mark_interval_us must be an integer > 0, was {self.mark_interval_us!r}")


# ---------------------------------------------------------------------------------------
# The replay


@dataclass(slots=True)
class ReplayStats:
    recorded_opens: int = 0
    recorded_cancels: int = 0
    recorded_trades: int = 0
    own_recorded: int = 0
    flow_sent: int = 0
    flow_quantity: int = 0
    flow_short: int = 0
    """Recorded taker quantity that found nothing to trade with at its price in the replay."""
    transient_rests: int = 0
    rejected: int = 0
    places_sent: int = 0
    cancels_sent: int = 0
    rate_waits: int = 0
    notices_to_strategy: int = 0
    copies_set: int = 0
    """Copies of recorded makers set to the recorded remaining after a re-sent trade."""
    copies_emptied: int = 0
    """... that the core had closed (dust) although the recording says they kept some."""
    copies_unfunded: int = 0


class Replay:
    """One replay of ``data`` through the strategies of ``config`` (see the module docstring).

    Build it, call :meth:`run` once.  ``exchange`` is the replay exchange (inspect it in
    tests), ``core`` the strategy's TradingCore.
    """

    DEFAULT_ROUNDING = "shared"
    """ReplayOptions.rounding when None."""

    def __init__(self, config: RunConfig, data: ReplayData, options: ReplayOptions | None = None, *,
                 config_path: str = "") -> None:
        from engine.exchange.core import Exchange

        self.config = config
        self.data = data
        self.options = opts = options or ReplayOptions()
        self.config_path = config_path
        self.seed = config.run.seed if opts.seed is None else opts.seed
        self.now_us = data.start_us
        self.stats = ReplayStats()

        wanted = [market_by_name(m) for m in config.markets]
        have = {m.codes: i for i, m in enumerate(data.markets)}
        self.markets = wanted
        self._mi: dict[int, Market] = {}
        for m in wanted:
            i = have.get(m.codes)
            if i is None or not any(s.market == i for s in data.snapshots):
                raise ConfigError(
                    f"{data.source}: the recording has no WatchOrders snapshot of {m.name}, which the config trades"
                )
            self._mi[i] = m

        settings, self.maker_uid, self.taker_uid = _replay_settings(config, opts.exchange_config)
        if data.header.get("api_version") not in (None, settings.api_version):
            raise ConfigError(
                f"{data.source}: recorded at API v{data.header['api_version']}, the exchange config says "
                f"v{settings.api_version} (amounts would be misread)"
            )
        self.exchange = Exchange(settings, clock_us=self._clock_us, rng=random.Random(self.seed), credentials={})
        ex = self.exchange
        self.rounding = opts.rounding or self.DEFAULT_ROUNDING
        if self.rounding == "strategy":
            self._split_rounding()
        if opts.recorded_fees == "first_tier":
            self._no_recorded_volume()
        self._m_sess = ex.open_internal_session(self.maker_uid, None)
        self._t_sess = ex.open_internal_session(self.taker_uid, None)
        self._s_sess: Any = None
        self._rec2rep: dict[int, dict[int, int]] = {i: {} for i in self._mi}
        self._own_resting: set[int] = set()
        self._taken_by_us: set[int] = set()
        self._held_copies: set[int] = set()
        """Replay ids of copies of recorded orders that hold more than the recording says:
        the strategy's order took flow that, live, went to them (see _take)."""
        self._deferred: list[int] = []

        self.core = self._build_core()
        self._tickers = opts.tickers if opts.tickers is not None else any(
            type(slot.strategy).on_ticker is not Strategy.on_ticker for slot in self.core.slots.values()
        )
        lim = DEFAULT_LIMITS["orders"]
        self._limiter = make_limiter(lim, config.rate_limits.algorithm)
        self._last_send = -_INF

        self._to_strat: deque[tuple[int, int, Any, Any]] = deque()
        self._to_ex: deque[tuple[int, Outgoing, Any]] = deque()
        self._timers: list[tuple[int, int, int, str]] = []
        self._seq = 0
        self._nfills = 0
        self._marks: list[tuple[int, int, int, int, int]] = []
        self._mark_cache: dict[str, tuple[tuple[int, int | None], int, int]] = {}
        self._names = list(self.core.slots)
        self._index = {n: i for i, n in enumerate(self._names)}
        self.started = False
        self.stopped = False
        self.events_done = 0
        self._rows_done = self._snaps_done = 0

    def _split_rounding(self) -> None:
        """ReplayOptions.rounding == "strategy": each trade picks its stream by its parties
        (the core reads ``_below`` once per trade, at its start)."""
        ex = self.exchange
        own = ex._below
        # Trades among the recorded users round down (no draw): their copies then never
        # lose a unit of quantity to reservation rounding (dust), so recorded flow reaches
        # the strategy's orders as it does in the fast path, which re-trades none of it.
        def market(n: int) -> int:
            return n
        trade = ex._trade
        uid = STRATEGY_USER_ID

        def _trade(book: Any, buyer: Any, seller: Any, *args: Any) -> int:
            ex._below = own if buyer.user_id == uid or seller.user_id == uid else market
            return trade(book, buyer, seller, *args)

        ex._trade = _trade  # type: ignore[method-assign,assignment]

    def _no_recorded_volume(self) -> None:
        """ReplayOptions.recorded_fees == "first_tier": the stand-ins' trades are not volume."""
        ex = self.exchange
        add = ex._add_volume
        skip = {self.maker_uid, self.taker_uid}

        def _add_volume(acct: Any, *args: Any) -> None:
            if acct.user_id not in skip:
                add(acct, *args)

        ex._add_volume = _add_volume  # type: ignore[method-assign,assignment]

    def _emulate_shared_rounding(self, times: np.ndarray) -> None:
        """``rounding="shared"`` for a path that re-trades no recorded flow (the fast path):
        before each trade in the core, the one rounding stream is advanced by the draws the
        exact path's re-trades of the recorded trades since the last one would have made, so
        the strategy's trades draw from the place in the stream they draw from live.

        A recorded trade among recorded users (not ours, in a traded market) is, in the exact
        path, a stand-in taker (``T``, the later order id) trading with a copy of the recorded
        maker (``M``): its total draws if ``quantity * price`` has a fraction, then the
        buyer's fee, then the seller's, each if it has one, at the fee rates ``M`` and ``T``
        pay (ReplayOptions.recorded_fees).  Rows up to the current one are due, but for
        the rows walked in Python (``_interact``): their walk's trades stand for them, one
        per order reached, in walk order -- ours in the core, the recorded makers' in
        ``_recorded_fill`` -- and none if the flow found nothing to trade with (the exact
        path's stand-in trades with each copy in turn, ours included, or not at all).
        ``times``: the recorded receive time of each row (arrivals see every row up to now)."""
        ex = self.exchange
        ev = self.data.events
        mine = np.isin(self.data.market, np.fromiter(self._mi, dtype=np.int64)) if self._mi else np.zeros(len(ev), bool)
        sel = (ev["kind"] == EV_MATCH) & mine & ((ev["flags"] & (EVF_OWN | EVF_OWN_ASK)) == 0)
        rows = np.flatnonzero(sel)
        flags = ev["flags"][rows]
        has_ask = (flags & EVF_HAS_ASK) != 0
        taker_buy = ~has_ask | (((flags & EVF_HAS_BID) != 0) & (ev["id"][rows] > ev["ask_id"][rows]))
        books = {i: ex._books[m.codes] for i, m in self._mi.items()}
        todo = list(zip(rows.tolist(), self.data.market[rows].tolist(), ev["quantity"][rows].tolist(),
                        ev["price"][rows].tolist(), taker_buy.tolist(), strict=True))
        maker, taker = ex._accounts[self.maker_uid], ex._accounts[self.taker_uid]
        state = {"next": 0, "row": -1, "in_row": False}
        trade = ex._trade

        def draw(book: Any, x: int, p: int, buy: bool) -> None:
            """The draws of one re-traded recorded trade (``buy``: the taker bought)."""
            below = ex._below
            ppm_m = ex._fee_ppm(maker, book, True)
            ppm_t = ex._fee_ppm(taker, book, False)
            ppm_b, ppm_a = (ppm_t, ppm_m) if buy else (ppm_m, ppm_t)
            t, r = divmod(x * p * book.mul, book.den)
            if r and below(book.den) < r:
                t += 1
            for ppm in (ppm_b, ppm_a):
                if (t * ppm) % PPM:
                    below(PPM)
            ex._add_volume(maker, book, x, t, self.now_us)
            ex._add_volume(taker, book, x, t, self.now_us)

        def catch_up(upto: int) -> None:
            """Draw for the due rows before ``upto`` (a row index, exclusive)."""
            k = state["next"]
            while k < len(todo) and todo[k][0] < upto:
                _, mi, x, p, buy = todo[k]
                k += 1
                draw(books[mi], x, p, buy)
            state["next"] = k

        def _recorded_fill(market: Market, buy: bool, x: int, p: int) -> None:
            # A recorded maker filled by the row being walked: the exact path's stand-in
            # trades with its copy there, between the trades of ours the walk makes, so the
            # row's draws are these (one trade per maker reached), in walk order.
            if state["in_row"]:
                catch_up(state["row"])
                draw(ex._books[market.codes], x, p, buy)

        setattr(self, "_recorded_fill", _recorded_fill)  # noqa: B010

        def _trade(*args: Any) -> int:
            if state["in_row"]:
                catch_up(state["row"])
            else:
                catch_up(int(np.searchsorted(times, self.now_us, side="right")))
            return trade(*args)

        ex._trade = _trade  # type: ignore[method-assign,assignment]
        interact = getattr(self, "_interact")  # noqa: B009 - FastReplay's, wrapped on the instance

        def _interact(i: int, market: Market) -> None:
            state["row"], state["in_row"] = i, True
            try:
                interact(i, market)
            finally:
                state["in_row"] = False
                # the walk's trades (ours in the core, the recorded makers' in _recorded_fill)
                # drew for this row, one per order reached; none if its flow found nothing
                # to trade with, as the exact path's stand-in then does not trade
                catch_up(i)
                if state["next"] < len(todo) and todo[state["next"]][0] == i:
                    state["next"] += 1

        setattr(self, "_interact", _interact)  # noqa: B010

    # -- clocks --------------------------------------------------------------------------

    def _clock_us(self) -> int:
        return self.now_us

    def _clock_s(self) -> float:
        return self.now_us / 1e6

    # -- set-up ----------------------------------------------------------------------------

    def _build_core(self) -> TradingCore:
        """What Runner._build_core does, with in-memory state (no files) and virtual clocks."""
        cfg = self.config
        risk = RiskGovernor(cfg.user_risk(), state_path=None, now=self._clock_s, kill_file=None, scales=cfg.scales)
        tonces = TonceAllocator(None, clock=self._clock_us, user_id=STRATEGY_USER_ID)
        core = TradingCore(markets=self.markets, risk=risk, tonces=tonces, clock=self._clock_s,
                           clock_us=self._clock_us, scales=cfg.scales)
        core.on_book_deferred = self._book_deferred
        for spec in cfg.strategies:
            cls = spec.strategy_class
            core.add_strategy(spec.name, cls(spec.name, spec.params), spec.market_info, cfg.strategy_risk(spec.name))
        return core

    def _book_deferred(self) -> None:
        """An ``on_book`` is owed (conflation): wake at its due time, as the runner's task does."""
        due = self.core.book_due_us()
        if due is not None:
            self._push_timer(due, _T_BOOK)

    def _push_timer(self, t: int, kind: int, name: str = "") -> None:
        import heapq

        self._seq += 1
        heapq.heappush(self._timers, (t, self._seq, kind, name))

    # -- the exchange side -----------------------------------------------------------------

    def _deliver(self, notice: Notice) -> None:
        """The strategy session's ``deliver``: in engine order, seen after the feed latency."""
        self._to_strat.append((self.now_us + self.options.feed_latency_us, _D_NOTICE, notice, None))

    def _apply_snapshot(self, snap: Snapshot) -> None:
        market = self._mi.get(snap.market)
        if market is None:
            return
        shadows = self._rec2rep[snap.market]
        orders = snap.reply.orders
        assert orders is not UNSET
        present = {o.id for o in orders}
        # A re-snapshot (after a gap in the recording): drop what the recording lost track
        # of, add what it did not know (at the back of its queue: that is all we can do).
        for rec_id in [i for i in shadows if i not in present]:
            self.exchange.handle(self._m_sess, CancelOrder(id=shadows.pop(rec_id)))
        for o in sorted(orders, key=_by_id):
            if o.id not in shadows and o.id not in self._own_resting:
                self._place_shadow(market, shadows, o.id, o.price, o.quantity)

    def _place_shadow(self, market: Market, shadows: dict[int, int], rec_id: int, price: int, quantity: int) -> None:
        r = self.exchange.handle(
            self._m_sess,
            PlaceOrder(base=market.base.code, counter=market.counter.code, quantity=quantity, price=price, persist=True),
        )
        if type(r) is PlaceOrderReply:
            shadows[rec_id] = r.id  # type: ignore[assignment]
        else:
            self.stats.rejected += 1
            log.debug("recorded order %s not placed: %s", rec_id, r)

    def _take(self, market: Market, buy: bool, price: int, quantity: int,
              shadows: dict[int, int] | None = None, maker: tuple[int, int] | None = None,
              taker: tuple[int, int] | None = None) -> None:
        """Re-send recorded aggressive flow: ``quantity`` at ``price`` or better, never more.

        ``maker``: (recorded id, recorded remaining) of the trade's maker, whose copy is
        ``shadows[id]``.  When the flow reaches that copy in full, the copy is left holding
        what the recording says (:meth:`_follow`), not what the replay's fees and rounding
        draws left it: live, the participant's order paid its own.  ``taker``: (recorded
        id, recorded remaining) of the trade's taker, None for a market order: the strategy
        sees the trades under it (:meth:`_as_recorded_taker`), not under the stand-in."""
        ex = self.exchange
        # Read-only look at the core's book: how much rests at or inside ``price``.  A
        # market buy for at most that much trades exactly it (the buyer's budget is huge;
        # a limit bid would lose the taker's fee out of its reservation and buy less).
        book = ex._books[market.codes]
        avail = 0
        if buy:
            for o in book.asks:
                if o.price > price:
                    break
                avail += o.quantity
                if avail >= quantity:
                    break
        else:
            for o in book.bids:
                if o.price < price:
                    break
                avail += o.quantity
                if avail >= quantity:
                    break
        x = quantity if avail >= quantity else avail
        self.stats.flow_short += quantity - x
        if x <= 0:
            return
        self.stats.flow_sent += 1
        self.stats.flow_quantity += x
        codes = market.codes
        mark = len(self._to_strat)
        copy = None
        if maker is not None and shadows is not None and maker[1] >= 0:
            rid = shadows.get(maker[0])
            copy = ex._orders.get(rid) if rid is not None else None
        if copy is not None:
            # count what the copy trades in this command (a wrapper for its duration only)
            got = [0]
            trade = ex._trade
            order = copy

            def _trade(book: Any, buyer: Any, seller: Any, bid: Any, ask: Any, x: int, *rest: Any) -> int:
                if bid is order or ask is order:
                    got[0] += x
                return trade(book, buyer, seller, bid, ask, x, *rest)

            before = copy.quantity
            if copy.is_bid:
                # the live bid kept the recorded remaining after its fee and rounding; the
                # copy's draws differ, so it must not lose a unit of quantity to them here
                # (a bid that ends with no quantity is closed and cannot be put back):
                # reserve 1 % of the trade's value more, the fill returns what it does not
                # need, and _follow sets what the recording says
                m = book.mul
                ex.set_remaining(copy.id, before, (x * price * m) // (100 * book.den) + 3)
            ex._trade = _trade  # type: ignore[method-assign,assignment]
        try:
            if buy:
                ex.handle(self._t_sess, PlaceOrder(base=codes[0], counter=codes[1], quantity=x))
            else:
                # A sell is a limit order at the trade price: a resting bid may buy less than
                # its quantity (its fee comes out of its reservation), so a remainder may be
                # left; it must not rest, and the strategy must not see it (it never existed
                # live).
                r = ex.handle(self._t_sess, PlaceOrder(base=codes[0], counter=codes[1], quantity=-x, price=price))
                if type(r) is PlaceOrderReply:
                    if ex.open_orders(self.taker_uid):
                        self.stats.transient_rests += 1
                        ex.handle(self._t_sess, CancelOrder(id=r.id))  # type: ignore[arg-type]
                    # The strategy must not see this stand-in order open or close: live, the
                    # recorded taker was one order (or a market order) and its own
                    # OrderClosed, if any, is in the recording and is passed through (see
                    # _closed_unknown).
                    self._hide(mark, r.id)
        finally:
            if copy is not None:
                ex._trade = trade  # type: ignore[method-assign]
        if len(self._to_strat) > mark:
            self._as_recorded_taker(buy, taker, mark)
        if copy is not None:
            assert maker is not None
            self._follow(copy, before, got[0], quantity, maker[1], mark)

    def _as_recorded_taker(self, buy: bool, taker: tuple[int, int] | None, mark: int) -> None:
        """The stand-in's trades, as the strategy sees them, carry the recorded taker: its id
        (under one no replay order has, as in :meth:`_closed_unknown`) and remaining, or
        neither for a recorded market order (the stand-in is a market buy or a limit sell
        whatever the recorded taker was: on_trade's aggressor comes from which is absent)."""
        if taker is None:
            tid: Any = UNSET
            rem: Any = UNSET
        else:
            tid = _FOREIGN_ID | (taker[0] & _ID_MASK)
            rem = taker[1] if taker[1] >= 0 else UNSET
        q = self._to_strat
        for j in range(mark, len(q)):
            item = q[j]
            n = item[2]
            if item[1] == _D_NOTICE and type(n) is OrdersMatched:
                if buy:
                    n = msgspec.structs.replace(n, bid=tid, bid_rem=rem)
                else:
                    n = msgspec.structs.replace(n, ask=tid, ask_rem=rem)
                q[j] = (item[0], item[1], n, item[3])

    def _follow(self, copy: Any, before: int, got: int, quantity: int, recorded: int, mark: int) -> None:
        """After a re-sent recorded trade: the maker's ``copy`` (``before`` it traded, ``got``
        of the recorded ``quantity``) holds the ``recorded`` remaining, as the fast path's
        view does.  Its fee and the replay's rounding draws may have left it a few units
        more or less (a bid's remaining is capped by what its reservation still buys), which
        the next flow would pass on to the order behind it -- sometimes ours.  A copy the
        replay already changed keeps what the replay left it: one that holds more because
        the strategy's order took flow that, live, went to it ("held", until the recording
        closes it), and one that the strategy's crossing order took part of (never raised
        above what it holds, less what it just traded)."""
        rid = copy.id
        ex = self.exchange
        resting = rid in ex._orders
        if got == 0 and resting and copy.is_bid:
            ex.set_remaining(rid, copy.quantity)  # untouched: back to O6's reservation
        if got < quantity:
            if resting:
                self._held_copies.add(rid)
            return
        if rid in self._held_copies:
            return
        target = min(before - quantity, recorded)
        now = copy.quantity if resting else 0
        if now == target:
            return
        if now == 0:
            self.stats.copies_emptied += 1  # closed by the core already: cannot be put back
            return
        if not ex.set_remaining(rid, target):
            self.stats.copies_unfunded += 1
            return
        self.stats.copies_set += 1
        # the strategy sees the trade leave the copy with what the recording says
        q = self._to_strat
        for j in range(len(q) - 1, mark - 1, -1):
            item = q[j]
            n = item[2]
            if item[1] == _D_NOTICE and type(n) is OrdersMatched:
                if copy.is_bid and n.bid == rid:
                    q[j] = (item[0], item[1], msgspec.structs.replace(n, bid_rem=target), item[3])
                    break
                if not copy.is_bid and n.ask == rid:
                    q[j] = (item[0], item[1], msgspec.structs.replace(n, ask_rem=target), item[3])
                    break

    def _closed_unknown(self, market: Market, oid: int, quantity: int, price: int) -> None:
        """A recorded OrderClosed of an order that never rested in the recorded book (a taker
        filled on arrival, or an order beyond the snapshot's depth): a live watcher saw it
        and the strategy's book ignored it (with the IGNORED flag, which still wakes
        ``on_book``); pass it through unchanged but for an id no replay order can have."""
        n = OrderClosed(id=_FOREIGN_ID | (oid & _ID_MASK), base=market.base.code, counter=market.counter.code,
                        quantity=quantity, price=price)
        self._to_strat.append((self.now_us + self.options.feed_latency_us, _D_NOTICE, n, None))

    def _close_deferred(self) -> None:
        ex, sess = self.exchange, self._m_sess
        for rid in self._deferred:
            ex.handle(sess, CancelOrder(id=rid))
        self._deferred.clear()

    def _hide(self, mark: int, oid: Any) -> None:
        q = self._to_strat
        tail = [q.pop() for _ in range(len(q) - mark)]
        tail.reverse()
        for item in tail:
            n = item[2]
            if item[1] == _D_NOTICE and type(n) in (OrderOpened, OrderClosed) and n.id == oid:
                continue
            q.append(item)

    # -- the strategy side -----------------------------------------------------------------

    def _subscribe(self) -> None:
        """The runner's start-up, at the exchange: reconcile, then watch books and tickers."""
        ex = self.exchange
        self._s_sess = s = ex.open_internal_session(STRATEGY_USER_ID, self._deliver)
        t = self.now_us + self.options.feed_latency_us
        q = self._to_strat
        q.append((t, _D_BALANCES, ex.handle(s, GetBalances()), None))
        q.append((t, _D_ORDERS, ex.handle(s, GetOrders()), None))
        for m in self.markets:
            base, counter = m.codes
            reply = ex.handle(s, WatchOrders(base=base, counter=counter, watch=True))
            # The reply follows any notice the command caused (none: it changes nothing).
            q.append((self.now_us + self.options.feed_latency_us, _D_SNAPSHOT, m, reply))
            if self._tickers:
                ex.handle(s, WatchTicker(base=base, counter=counter, watch=True))
        q.append((self.now_us + self.options.feed_latency_us, _D_START, None, None))

    def _flush(self) -> None:
        """Hand the core's new commands to the 'wire', in order, through the LIMITS.md limiter."""
        ob = self.core.outbox
        if not ob:
            return
        lim = self._limiter
        lat = self.options.order_latency_us
        while ob:
            out = ob.popleft()
            t = self.now_us if self.now_us > self._last_send else self._last_send
            while True:
                wait = lim.try_acquire(t / 1e6)
                if wait <= 0.0:
                    break
                self.stats.rate_waits += 1
                t += max(1, math.ceil(wait * 1e6))
            self._last_send = t
            try:
                cmd = out.order.to_command() if out.kind == "place" else out.order.cancel_command()
            except Exception as e:  # the runner logs and skips such a command too
                log.warning("%s of %s not sent: %s", out.kind, out.order, e)
                continue
            if out.kind == "place":
                self.stats.places_sent += 1
            else:
                self.stats.cancels_sent += 1
            self._to_ex.append((t + lat, out, cmd))

    def _arrive(self, out: Outgoing, cmd: Any) -> None:
        reply = self.exchange.handle(self._s_sess, cmd)
        kind = _D_PLACE if out.kind == "place" else _D_CANCEL
        self._to_strat.append((self.now_us + self.options.feed_latency_us, kind, out, reply))

    def _receive(self, kind: int, a: Any, b: Any) -> None:
        core = self.core
        if kind == _D_NOTICE:
            self.stats.notices_to_strategy += 1
            core.on_notice(a)
        elif kind == _D_PLACE:
            core.on_place_reply(a.order, b)
        elif kind == _D_CANCEL:
            core.on_cancel_reply(a.order, b)
        elif kind == _D_SNAPSHOT:
            core.on_snapshot(a, b)
        elif kind == _D_BALANCES:
            core.on_balances(a)
        elif kind == _D_ORDERS:
            core.on_open_orders(a, requested_at=self._clock_s())
        elif kind == _D_START:
            if self.stopped:
                return
            core.start()
            self.started = True
            for name, slot in core.slots.items():
                interval = getattr(slot.strategy.p, "timer_interval", None)
                if interval:
                    self._push_timer(self.now_us + int(float(interval) * 1e6), _T_TIMER, name)
            self._push_timer(self.now_us, _T_MARK)
        self._flush()
        self._mark_new_fills()

    def _mark_new_fills(self) -> None:
        """An equity mark for each strategy (in config order) that was filled since the last call."""
        core = self.core
        if len(core.fills) != self._nfills:
            names = sorted({n for n, _ in core.fills[self._nfills:]}, key=self._index.__getitem__)
            self._nfills = len(core.fills)
            for n in names:
                self._mark(n)

    def _mark(self, name: str) -> None:
        core = self.core
        slot = core.slots[name]
        mid = core.mark_price(slot.market)
        # equity moves only with a fill or the mark price: a quiet second reuses the last
        # (exact-fraction equity is the costly part of a mark)
        key = (len(core.fills), mid)
        last = self._mark_cache.get(name)
        if last is not None and last[0] == key:
            base, eq_units = last[1], last[2]
        else:
            base, eq_units = slot.position.base, core.equity_units(name)
            self._mark_cache[name] = (key, base, eq_units)
        self._marks.append((self.now_us, self._index[name], base, eq_units, mid or 0))

    def _timer(self, kind: int, name: str) -> None:
        if kind == _T_SUBSCRIBE:
            self._subscribe()
        elif kind == _T_TIMER:
            if self.stopped:
                return
            self.core.on_timer(name)
            self._flush()
            interval = float(getattr(self.core.slots[name].strategy.p, "timer_interval", 0) or 0)
            if interval > 0:
                self._push_timer(self.now_us + max(1, int(interval * 1e6)), _T_TIMER, name)
        elif kind == _T_BOOK:
            if self.stopped:
                return
            self.core.fire_due_books()
            self._flush()
        elif kind == _T_MARK:
            if self.stopped:
                return
            for n in self._names:
                self._mark(n)
            self._push_timer(self.now_us + self.options.mark_interval_us, _T_MARK)

    # -- the loop --------------------------------------------------------------------------

    def _window(self) -> tuple[int, int]:
        """(subscribe time, end time) of the replay: the strategy starts once every market
        has its first snapshot (or at ``start_us`` if later) and stops at the data's end."""
        data, opts = self.data, self.options
        first_snap = {i: min(s.t_us for s in data.snapshots if s.market == i) for i in self._mi}
        t_sub = max(first_snap.values())
        if opts.start_us is not None and opts.start_us > t_sub:
            t_sub = opts.start_us
        t_end = data.end_us if opts.end_us is None else min(opts.end_us, data.end_us)
        if t_sub > t_end:
            raise ConfigError(f"nothing to replay: the strategy would start at {t_sub}, after the end {t_end}")
        return t_sub, t_end

    def run(self) -> BacktestResult:
        """Replay everything, stop the strategies, settle, and return the result."""
        import heapq

        t_wall = time.perf_counter()
        data, opts = self.data, self.options
        ev = data.events
        n = len(ev)
        t_sub, t_end = self._window()
        self._push_timer(t_sub + opts.order_latency_us, _T_SUBSCRIBE)
        snaps = data.snapshots
        n_snaps = len(snaps)
        si = 0
        mine = self._mi
        rec2rep = self._rec2rep
        own = self._own_resting
        taken = self._taken_by_us
        deferred = self._deferred
        to_strat, to_ex, timers = self._to_strat, self._to_ex, self._timers
        stats = self.stats
        ex = self.exchange
        m_sess = self._m_sess
        progress = _Progress(data.total_events) if opts.progress else None

        i = 0
        chunk_end = 0
        c_t: list[int] = []
        c_kind: list[int] = []
        c_flags: list[int] = []
        c_id: list[int] = []
        c_price: list[int] = []
        c_qty: list[int] = []
        c_ask: list[int] = []
        c_rem: list[int] = []
        c_arem: list[int] = []
        c_mkt: list[int] = []
        base_i = 0
        while True:
            # -- the next recorded item (a snapshot due before events[i], or events[i])
            snap_due = si < n_snaps and snaps[si].pos <= i
            if snap_due:
                t_rec = snaps[si].t_us
            elif i < n:
                if i >= chunk_end:
                    base_i = i
                    chunk_end = min(n, i + _CHUNK)
                    part = ev[i:chunk_end]
                    c_t = part["recv_time"].tolist()
                    c_kind = part["kind"].tolist()
                    c_flags = part["flags"].tolist()
                    c_id = part["id"].tolist()
                    c_price = part["price"].tolist()
                    c_qty = part["quantity"].tolist()
                    c_ask = part["ask_id"].tolist()
                    c_rem = part["remaining"].tolist()
                    c_arem = part["ask_remaining"].tolist()
                    c_mkt = data.market[i:chunk_end].tolist()
                t_rec = c_t[i - base_i]
            else:
                t_rec = _INF
            if t_rec > t_end:
                t_rec = _INF
                snap_due = False
            t_s = to_strat[0][0] if to_strat else _INF
            t_x = to_ex[0][0] if to_ex else _INF
            t_t = timers[0][0] if timers else _INF
            if deferred and (t_rec if t_rec < t_s else t_s) > self.now_us and min(t_x, t_t) > self.now_us:
                self._close_deferred()
                continue
            if t_rec == _INF and not self.stopped and t_s > t_end and t_x > t_end and t_t > t_end:
                self._stop(t_end)  # everything due by the end is done: shut down as the runner does
                continue
            if t_rec <= t_s and t_rec <= t_x and t_rec <= t_t and t_rec != _INF:
                if t_rec > self.now_us:
                    self.now_us = t_rec
                if snap_due:
                    self._apply_snapshot(snaps[si])
                    si += 1
                    continue
                k = i - base_i
                i += 1
                if progress is not None and not (i & 0x3FFF):
                    progress.show(i + si)
                market = mine.get(c_mkt[k])
                if market is None:
                    continue
                self.events_done += 1
                kind = c_kind[k]
                flags = c_flags[k]
                oid = c_id[k]
                if kind == EV_OPEN:
                    stats.recorded_opens += 1
                    if flags & EVF_OWN:
                        stats.own_recorded += 1
                        own.add(oid)
                    else:
                        self._place_shadow(market, rec2rep[c_mkt[k]], oid, c_price[k], c_qty[k])
                elif kind == EV_CLOSE:
                    stats.recorded_cancels += 1
                    if flags & EVF_OWN:
                        stats.own_recorded += 1
                        own.discard(oid)
                    else:
                        rid = rec2rep[c_mkt[k]].pop(oid, None)
                        if rid is None:
                            if self._s_sess is not None:
                                self._closed_unknown(market, oid, c_qty[k], c_price[k])
                        else:
                            if self._held_copies:
                                self._held_copies.discard(rid)
                            if oid in taken:
                                # Live, our own order took this one; ours may not have
                                # arrived yet in the replay (it is sent in reaction to
                                # notices of this instant): close it when the instant ends.
                                taken.discard(oid)
                                deferred.append(rid)
                            else:
                                ex.handle(m_sess, CancelOrder(id=rid))
                elif kind == EV_MATCH:
                    stats.recorded_trades += 1
                    shadows = rec2rep[c_mkt[k]]
                    has_bid = flags & EVF_HAS_BID
                    has_ask = flags & EVF_HAS_ASK
                    ask_id = c_ask[k]
                    if not has_bid:
                        taker_buy = True
                    elif not has_ask:
                        taker_buy = False
                    else:
                        # The maker was resting (known); the taker arrived later.
                        bid_rest = oid in shadows or oid in own
                        ask_rest = ask_id in shadows or ask_id in own
                        taker_buy = ask_rest if bid_rest != ask_rest else oid > ask_id
                    if taker_buy:
                        if flags & EVF_OWN:
                            taken.add(ask_id)  # our replayed order matches by itself
                            continue
                        if has_bid and oid in shadows:
                            continue  # placed in the replay already: it matched then
                    elif flags & EVF_OWN_ASK:
                        taken.add(oid)
                        continue
                    elif has_ask and ask_id in shadows:
                        continue
                    if taker_buy:
                        maker = (ask_id, c_arem[k]) if has_ask else None
                        taker = (oid, c_rem[k]) if has_bid else None
                    else:
                        maker = (oid, c_rem[k]) if has_bid else None
                        taker = (ask_id, c_arem[k]) if has_ask else None
                    self._take(market, taker_buy, c_price[k], c_qty[k], shadows, maker, taker)
                continue
            if self.stopped and min(t_s, t_x, t_t) > t_end + _SHUTDOWN_US:
                break  # the runner's shutdown deadline
            if t_s <= t_x and t_s <= t_t:
                t, kind_d, a, b = to_strat.popleft()
                if t > self.now_us:
                    self.now_us = t
                self._receive(kind_d, a, b)
            elif t_x <= t_t:
                t, out, cmd = to_ex.popleft()
                if t > self.now_us:
                    self.now_us = t
                self._arrive(out, cmd)
            else:
                t, _, kind_t, name = heapq.heappop(timers)
                if t > self.now_us:
                    self.now_us = t
                self._timer(kind_t, name)
        self._rows_done, self._snaps_done = i, si
        if progress is not None:
            progress.done(data.total_events)
        return self._result(time.perf_counter() - t_wall)

    def _stop(self, t_end: int) -> None:
        """The recording is over: the runner's shutdown (on_stop hooks, cancel everything)."""
        if self.now_us < t_end:
            self.now_us = t_end
        self.stopped = True
        self._timers.clear()
        if self.started:
            for n in self._names:
                self._mark(n)
            self.core.stop()
            self._flush()

    # -- the result ------------------------------------------------------------------------

    def final_state(self) -> dict[str, Any]:
        """Integers only (exact fractions as "num/den" text): what ``final_hash`` covers."""
        ex, core = self.exchange, self.core
        bal = ex.balances(STRATEGY_USER_ID)
        positions = {}
        for name, slot in core.slots.items():
            p = slot.positions.position(slot.market)
            positions[name] = {
                "base": p.base, "cost": str(p.cost), "realized": str(p.realized), "fees": p.fees,
                "volume_base": p.volume_base, "volume_counter": p.volume_counter, "trades": p.trades,
            }
        return {
            "balances": {f"{a:#x}": [v[0], v[1]] for a, v in sorted(bal.items())},
            "positions": positions,
            "open_orders": len(ex.open_orders(STRATEGY_USER_ID)),
        }

    def _result(self, wall: float) -> BacktestResult:
        core, ex, opts = self.core, self.exchange, self.options
        if opts.check_invariants:
            ex.check_invariants()
        mismatch: dict[str, Any] = {}
        if self._s_sess is not None:
            reply = ex.handle(self._s_sess, GetBalances())
            assert isinstance(reply, GetBalancesReply)
            mismatch = {f"{a:#x}": list(v) for a, v in core.balances.compare(reply).items()}
        fills = [
            FillRecord(name, f.ref, int(f.side), f.price, f.quantity, f.total, f.fee, f.time)
            for name, f in core.fills
        ]
        marks = np.array(self._marks, dtype=MARK_DTYPE) if self._marks else np.zeros(0, dtype=MARK_DTYPE)
        if len(marks):
            marks = marks[np.argsort(marks["time_us"], kind="stable")]
        state = self.final_state()
        events = self.data.events_until(self._rows_done, self._snaps_done, self.now_us)
        summary = core.summary()
        summary["fills"] = len(fills)
        st = self.stats
        summary["replay"] = {
            "api_version": ex.settings.api_version,
            "seed": self.seed,
            "order_latency_us": opts.order_latency_us,
            "feed_latency_us": opts.feed_latency_us,
            "rounding": self.rounding,
            "mode": "exact",
            "start_us": self.data.start_us,
            "end_us": self.now_us,
            "virtual_seconds": (self.now_us - self.data.start_us) / 1e6,
            "recorded_events": events,
            "recording_events": self.data.total_events,
            "book_events_replayed": self.events_done,
            "wall_seconds": wall,
            "events_per_second": events / wall if wall > 0 else None,
            "stats": {k: getattr(st, k) for k in st.__slots__},  # type: ignore[attr-defined]
            "balance_view_mismatch": mismatch,
            "exchange_state_hash": ex.state_hash(),
            "final_state": state,
        }
        return BacktestResult(
            config_path=self.config_path,
            data_path=self.data.source,
            seed=self.seed,
            fills=fills,
            marks=marks,
            strategies=list(self._names),
            summary=summary,
            events=events,
            wall_seconds=wall,
            final_hash=final_hash(fills, state),
            final_state=state,
        )


def _by_id(o: BookOrder) -> int:
    return o.id


def _replay_settings(config: RunConfig, exchange_config: str | None) -> tuple[Any, int, int]:
    """The replay exchange's settings: the embedded exchange's users, fees and API version,
    no participants, no rate limits, plus the recorded makers' and takers' users."""
    from engine.exchange.cli import load_config
    from engine.exchange.settings import UserSettings
    from engine.runner import DEFAULT_EXCHANGE_CONFIG

    path = exchange_config or config.exchange.config or DEFAULT_EXCHANGE_CONFIG
    xcfg = load_config(path)
    base = xcfg.exchange_settings(participants=False)
    if base.api_version != config.run.api_version:
        raise ConfigError(
            f"{path}: exchange api_version {base.api_version} differs from the run config's run.api_version "
            f"{config.run.api_version}"
        )
    ids = [u.user_id for u in base.users]
    if STRATEGY_USER_ID not in ids:
        raise ConfigError(f"{path}: the replay trades as user {STRATEGY_USER_ID}, who is not in its users")
    maker = max(ids) + 1
    taker = maker + 1
    scales = base.scales
    assets = sorted({a for m in base.market_list for a in (m.base, m.counter)}, key=lambda a: a.code)
    huge = {a.symbol: scales.format_amount(10**17, a) for a in assets}
    users = [*base.users, UserSettings(user_id=maker, balances=huge), UserSettings(user_id=taker, balances=huge)]
    limits = msgspec.structs.replace(base.limits, enabled=False)
    return msgspec.structs.replace(base, users=users, limits=limits), maker, taker


class _Progress:
    """A one-line progress bar on stderr (events replayed / total)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.t0 = time.perf_counter()

    def show(self, done: int) -> None:
        frac = min(done / self.total, 1.0)
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {done:>10,}/{self.total:,} events  {rate / 1e3:8.1f} k/s")
        sys.stderr.flush()

    def done(self, total: int) -> None:
        self.show(total)
        sys.stderr.write("\n")
        sys.stderr.flush()


def run_backtest(config: str | Path | RunConfig, data: str | Path | ReplayData,
                 options: ReplayOptions | None = None, *, fast: bool = False) -> BacktestResult:
    """Load (if given paths) and replay: the one call reports, sweeps and the CLI use.
    ``fast``: :class:`backtests.fast.FastReplay` instead of the exact :class:`Replay`."""
    if isinstance(config, RunConfig):
        cfg, cpath = config, "<config>"
    else:
        cpath = str(config)
        cfg = load_run_config(cpath, resolve_secrets=False)
    rd = data if isinstance(data, ReplayData) else load_recording(data)
    cls: type[Replay] = Replay
    if fast:
        from backtests.fast import FastReplay

        cls = FastReplay
    return cls(cfg, rd, options, config_path=cpath).run()
