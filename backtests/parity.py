"""Parity: does a backtest of a live run's recording reproduce the live run's fills?

::

    live = run_live(config, duration=600)            # cftrade run in virtual time, recorded
    result = Replay(config, live.data, ReplayOptions(seed=config.run.seed)).run()
    report = diff_fills(live.fills, result.fills, mark=...)
    print(format_report(report)); print(report.to_json())

The live run is :class:`engine.runner.Runner` itself on the embedded exchange (memory
transport, virtual time under trio's ``MockClock``), with the same config and seed.  What
its TradingCore received -- every notice and book snapshot, with the runner's clock at
receipt -- is the recording (:class:`RecordingRunner`), exactly what the live strategy saw,
own-order notices included (they carry ``tonce`` keys, so the replay knows not to replay
them as market flow).

Fills are matched one to one, in time order: a backtest fill matches a live fill of the same
strategy, side, price and quantity within ``tolerance_us``.  The report gives the share of
live fills reproduced, the extra backtest fills, and the PnL of each side computed the same
way (average cost, fees, marked at one common price), with the difference in percent.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec

from backtests.replay import RecordedMessage, ReplayData, replay_data_from_messages
from backtests.result import FillRecord
from engine.config import RunConfig
from engine.protocol.codec import CODEC
from engine.protocol.messages import UNSET, OrdersMatched, WatchOrdersReply
from engine.runner import Runner, RunOptions
from engine.runtime import TradingCore
from engine.scale import Market, Scales, market_by_name
from engine.state.positions import Position
from engine.strategy import Side

__all__ = [
    "LiveRun",
    "ParityReport",
    "RecordingRunner",
    "diff_fills",
    "format_report",
    "intent_sequence",
    "last_mid",
    "live_fills_from_messages",
    "run_live",
    "write_recording",
]

RECORDING_FORMAT = "cftrade-rec/1"


class RecordingRunner(Runner):
    """The live runner, unchanged, recording what its TradingCore receives.

    ``messages`` collects ``(receive time µs, market, message)``: every book snapshot the
    core loads and every notice it is given, in order, stamped with the runner's clock.
    """

    def __init__(self, config: RunConfig, options: RunOptions | None = None) -> None:
        super().__init__(config, options)
        self.messages: list[RecordedMessage] = []
        self.stopped_us: int | None = None
        """When the strategies were stopped (a backtest of the recording must stop there too)."""

    async def _shutdown(self) -> None:
        self.stopped_us = self.clock_us()
        await super()._shutdown()

    def _build_core(self, state_dir: Path) -> TradingCore:
        core = super()._build_core(state_dir)
        on_notice, on_snapshot = core.on_notice, core.on_snapshot
        sink = self.messages
        clock = self.clock_us

        def notice(n: Any) -> None:
            sink.append((clock(), None, n))
            on_notice(n)

        def snapshot(market: Market, reply: WatchOrdersReply) -> None:
            sink.append((clock(), market, reply))
            on_snapshot(market, reply)

        # Instance attributes shadow the methods: the runner calls these, the core is intact.
        setattr(core, "on_notice", notice)  # noqa: B010 - assigning a method needs setattr for mypy
        setattr(core, "on_snapshot", snapshot)  # noqa: B010
        return core


@dataclass
class LiveRun:
    """A recorded live run: its fills (with strategy names), summary and recording."""

    fills: list[FillRecord]
    summary: dict[str, Any]
    messages: list[RecordedMessage]
    config: RunConfig
    stopped_us: int | None = None
    intents: list[tuple[Any, ...]] = field(default_factory=list)
    """:func:`intent_sequence` of the live core."""
    exchange: Any = None
    """The live run's embedded exchange (engine.exchange.core.Exchange), as it ended."""

    @property
    def data(self) -> ReplayData:
        return replay_data_from_messages(self.messages, "<live run>", self.header)

    @property
    def header(self) -> dict[str, Any]:
        return {"format": RECORDING_FORMAT, "api_version": self.config.run.api_version,
                "markets": list(self.config.markets), "source": "cftrade diff (embedded, virtual time)",
                "user_id": 1, "created_us": self.messages[0][0] if self.messages else 0,
                "stopped_us": self.stopped_us}


def run_live(config: RunConfig, duration: float, *, state_dir: str | None = None,
             only_config_markets: bool = True) -> LiveRun:
    """Run ``config`` on the embedded exchange in virtual time (trio MockClock, memory
    transport) for ``duration`` virtual seconds, recording it.  Synchronous: it calls
    ``trio.run``; from async code use :func:`run_live_async` instead."""
    import trio
    import trio.testing

    async def main() -> LiveRun:
        return await run_live_async(config, duration, state_dir=state_dir, only_config_markets=only_config_markets)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def run_live_async(config: RunConfig, duration: float, *, state_dir: str | None = None,
                         only_config_markets: bool = True) -> LiveRun:
    """:func:`run_live` inside a running trio loop (tests: under ``autojump_clock``).

    ``only_config_markets`` runs the simulated participants of the config's markets only:
    every market's trades draw from the exchange's one stochastic-rounding stream, so
    trades in a market the recording does not hold would make the replay's draws differ
    from the live ones (totals and fees off by a unit, a dust remainder here and there,
    and the strategy's reaction to them)."""
    if not config.exchange.embedded:
        raise ValueError("a parity run needs the embedded exchange (no exchange.url in the config)")
    with tempfile.TemporaryDirectory(prefix="cftrade-parity-") as tmp:
        run = msgspec.structs.replace(config.run, state_dir=state_dir or tmp)
        cfg = msgspec.structs.replace(config, run=run)
        if only_config_markets:
            cfg = _only_config_markets(cfg, Path(tmp) / "exchange.yaml")
        runner = RecordingRunner(cfg, RunOptions(duration=duration, status=False, handle_signals=False,
                                                 transport="memory", watchdog_seconds=0))
        result = await runner.run()
    core = runner.core
    assert core is not None
    fills = [FillRecord(name, f.ref, int(f.side), f.price, f.quantity, f.total, f.fee, f.time) for name, f in core.fills]
    return LiveRun(fills, result.summary, runner.messages, config, runner.stopped_us, intent_sequence(core),
                   runner.exchange)


def intent_sequence(core: TradingCore) -> list[tuple[Any, ...]]:
    """Every order the core placed, in order: (strategy, side, price, quantity, total).

    S2's "identical intent sequences": a backtest that saw what the live run saw places
    exactly the same orders.  Times are left out (the live core's clock is trio's)."""
    return [(o.strategy, int(o.side), o.price, o.quantity, o.total) for o in core.tracker]


def _only_config_markets(config: RunConfig, path: Path) -> RunConfig:
    """``config`` with an exchange YAML whose participants trade the config's markets only."""
    import yaml

    from engine.exchange.cli import load_config
    from engine.runner import DEFAULT_EXCHANGE_CONFIG

    src = config.exchange.config or DEFAULT_EXCHANGE_CONFIG
    xcfg = load_config(src)
    keep = {market_by_name(m).name for m in config.markets}
    parts = [m for m in xcfg.participants.markets if market_by_name(m.market).name in keep]
    if len(parts) == len(xcfg.participants.markets):
        return config
    xcfg = msgspec.structs.replace(xcfg, participants=msgspec.structs.replace(xcfg.participants, markets=parts))
    path.write_text(yaml.safe_dump(msgspec.to_builtins(xcfg), sort_keys=False))
    exchange = msgspec.structs.replace(config.exchange, config=str(path))
    return msgspec.structs.replace(config, exchange=exchange)


def live_fills_from_messages(messages: Iterable[RecordedMessage], strategy: str = "*") -> list[FillRecord]:
    """The recording user's own fills, from OrdersMatched notices that carry our tonce.

    A recording does not say which strategy an order belonged to: every fill is given
    ``strategy`` (match with ``any_strategy=True`` when there are several).
    """
    out: list[FillRecord] = []
    for _, _, n in messages:
        if type(n) is not OrdersMatched:
            continue
        assert isinstance(n, OrdersMatched)
        for side, tonce, fee, oid in ((Side.BUY, n.bid_tonce, n.bid_counter_fee, n.bid),
                                      (Side.SELL, n.ask_tonce, n.ask_counter_fee, n.ask)):
            if tonce is UNSET:
                continue
            ref = oid if isinstance(oid, int) else 0
            out.append(FillRecord(strategy, ref, int(side), n.price, n.quantity, n.total,
                                  fee if isinstance(fee, int) else 0, n.time))
    return out


def write_recording(path: str | Path, messages: Sequence[RecordedMessage], *, header: dict[str, Any] | None = None) -> int:
    """Write messages as a cftrade JSONL recording (docs/RECORDING.md: a header line, then
    ``{"t": µs, "m": <notice>}`` or ``{"t": µs, "market": "XBT:GBP", "reply": "WatchOrders",
    "m": <reply>}`` per message).  Returns the number of messages written."""
    head = {"format": RECORDING_FORMAT, "api_version": 2, "markets": [], "source": "", "user_id": None,
            "created_us": 0, **(header or {})}
    if not head["markets"]:
        head["markets"] = sorted({m.name for _, m, _ in messages if m is not None})
    n = 0
    with Path(path).open("wb") as fh:
        fh.write(json.dumps(head, sort_keys=True).encode() + b"\n")
        for t, market, msg in messages:
            body = CODEC.encode(msg)
            if market is not None and isinstance(msg, WatchOrdersReply):
                fh.write(b'{"t":%d,"market":"%s","reply":"WatchOrders","m":%s}\n' % (t, market.name.encode(), body))
            else:
                fh.write(b'{"t":%d,"m":%s}\n' % (t, body))
            n += 1
    return n


# ---------------------------------------------------------------------------------------
# The diff


@dataclass
class ParityReport:
    """Fill-by-fill comparison of a live run and its backtest (see the module docstring)."""

    live_fills: int
    backtest_fills: int
    matched: int
    tolerance_us: int
    live_pnl: Fraction
    backtest_pnl: Fraction
    mark: int | None
    unmatched_live: list[FillRecord] = field(default_factory=list)
    unmatched_backtest: list[FillRecord] = field(default_factory=list)
    time_offsets_us: list[int] = field(default_factory=list)
    total_diffs: int = 0
    """Matched pairs whose counter total or fee differs (stochastic rounding draws)."""
    counter: str = "GBP"
    scales: Scales = field(default_factory=Scales)
    market: Market | None = None

    @property
    def reproduced(self) -> float:
        """Share of live fills the backtest reproduced (1.0 if there were none)."""
        return self.matched / self.live_fills if self.live_fills else 1.0

    @property
    def pnl_diff(self) -> Fraction:
        return self.backtest_pnl - self.live_pnl

    @property
    def pnl_diff_pct(self) -> float | None:
        """|backtest − live| / |live| in percent (None when the live PnL is 0)."""
        if self.live_pnl == 0:
            return None if self.backtest_pnl != 0 else 0.0
        return float(abs(self.pnl_diff) / abs(self.live_pnl) * 100)

    def as_dict(self) -> dict[str, Any]:
        pct = self.pnl_diff_pct
        return {
            "live_fills": self.live_fills,
            "backtest_fills": self.backtest_fills,
            "matched": self.matched,
            "reproduced_pct": round(self.reproduced * 100, 3),
            "extra_backtest_fills": self.backtest_fills - self.matched,
            "tolerance_us": self.tolerance_us,
            "live_pnl": self._money(self.live_pnl),
            "backtest_pnl": self._money(self.backtest_pnl),
            "pnl_diff": self._money(self.pnl_diff),
            "pnl_diff_pct": None if pct is None else round(pct, 4),
            "mark": self.mark,
            "total_or_fee_diffs": self.total_diffs,
            "max_time_offset_us": max((abs(x) for x in self.time_offsets_us), default=0),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def _money(self, v: Fraction) -> str:
        sign = "-" if v < 0 else ""
        cents = abs(v)
        scale = self.scales.amount_scale(self.market.counter) if self.market is not None else 100
        whole = int(cents)
        digits = len(str(scale)) - 1
        frac = int((cents - whole) * 10**4)  # four extra places of a counter unit
        return f"{sign}{whole // scale}.{whole % scale:0{digits}d}{frac:04d}"


def _pnl(fills: Sequence[FillRecord], market: Market, scales: Scales, mark: int | None) -> Fraction:
    pos = Position(market, scales)
    for f in fills:
        pos.add(Side(f.side), f.quantity, f.price, f.total, f.fee)
    return pos.net(mark if pos.base else None)


def diff_fills(live: Sequence[FillRecord], backtest: Sequence[FillRecord], *, market: Market | str,
               scales: Scales | None = None, mark: int | None = None, tolerance_us: int = 1_000_000,
               any_strategy: bool = False) -> ParityReport:
    """Match fills one to one and compare PnL (see the module docstring).

    ``mark`` values open positions (the same price for both sides: e.g. the last mid of the
    recording); ``any_strategy`` ignores strategy names (fills taken from a recording have
    none).  Matching is greedy in time order: each live fill takes the earliest unmatched
    backtest fill with the same key within the tolerance.
    """
    m = market_by_name(market) if isinstance(market, str) else market
    sc = scales or Scales()
    pool: dict[tuple[Any, ...], list[int]] = {}
    for j, f in enumerate(backtest):
        key = (None if any_strategy else f.strategy, f.side, f.price, f.quantity)
        pool.setdefault(key, []).append(j)
    used = [False] * len(backtest)
    matched = 0
    offsets: list[int] = []
    unmatched_live: list[FillRecord] = []
    diffs = 0
    for f in live:
        key = (None if any_strategy else f.strategy, f.side, f.price, f.quantity)
        best = None
        for j in pool.get(key, ()):
            if used[j]:
                continue
            dt = backtest[j].time_us - f.time_us
            if abs(dt) <= tolerance_us and (best is None or abs(dt) < abs(backtest[best].time_us - f.time_us)):
                best = j
        if best is None:
            unmatched_live.append(f)
            continue
        used[best] = True
        matched += 1
        b = backtest[best]
        offsets.append(b.time_us - f.time_us)
        if b.total != f.total or b.fee != f.fee:
            diffs += 1
    extra = [backtest[j] for j in range(len(backtest)) if not used[j]]
    return ParityReport(
        live_fills=len(live), backtest_fills=len(backtest), matched=matched, tolerance_us=tolerance_us,
        live_pnl=_pnl(live, m, sc, mark), backtest_pnl=_pnl(backtest, m, sc, mark), mark=mark,
        unmatched_live=unmatched_live, unmatched_backtest=extra, time_offsets_us=offsets, total_diffs=diffs,
        counter=m.counter.symbol, scales=sc, market=m,
    )


def last_mid(messages: Sequence[RecordedMessage], market: Market) -> int | None:
    """The mid of the recorded public book at the end (replays the book notices)."""
    from engine.state.book import Book

    book = Book(market)
    for _, mk, msg in messages:
        if isinstance(msg, WatchOrdersReply):
            if mk is not None and mk.codes == market.codes:
                if book.ready:
                    book.reset()
                book.load_snapshot(msg)
        else:
            book.apply(msg)  # other markets' and non-book notices are ignored by the book
    if book.best_bid is None or book.best_ask is None:
        return None
    return (book.best_bid + book.best_ask) // 2


def format_report(report: ParityReport) -> str:
    """A terminal table of the report, with the unmatched fills (at most 10 each)."""
    d = report.as_dict()
    pct = "n/a" if d["pnl_diff_pct"] is None else f"{d['pnl_diff_pct']:.3f} %"
    rows = [
        ("live fills", str(d["live_fills"])),
        ("backtest fills", str(d["backtest_fills"])),
        ("reproduced", f"{d['matched']} ({d['reproduced_pct']:.2f} %)"),
        ("extra in backtest", str(d["extra_backtest_fills"])),
        (f"live PnL ({report.counter})", d["live_pnl"]),
        (f"backtest PnL ({report.counter})", d["backtest_pnl"]),
        ("PnL difference", f"{d['pnl_diff']} ({pct})"),
        ("total/fee differ (rounding)", str(d["total_or_fee_diffs"])),
        ("max time offset", f"{d['max_time_offset_us']} µs"),
    ]
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    for title, fills in (("live fills not reproduced", report.unmatched_live),
                         ("backtest fills not in the live run", report.unmatched_backtest)):
        if fills:
            lines.append(f"{title} ({len(fills)}):")
            for f in fills[:10]:
                side = "buy " if f.side > 0 else "sell"
                lines.append(f"  t={f.time_us} {f.strategy} {side} {f.quantity} @ {f.price}")
    return "\n".join(lines)
