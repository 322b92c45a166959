"""Seeded market recordings made by the local exchange in virtual time, without trio.

The exchange core and its simulated participants (:class:`~engine.exchange.participants.
MarketSimulator`, liquidity providers and takers around a fair-value process) run on a
manual clock as fast as the core goes.  A watcher session subscribes to the orders and the
ticker of every recorded market, exactly as a client would over the wire, and each notice
it is delivered is written with receive time = exchange time + feed latency (plus optional
seeded jitter, never reordering)::

    python -m backtests.generate --hours 2 --seed 7 --out data/2h.jsonl
    cftrade record --generate --hours 2 --seed 7 --out data/2h.npz     # the same, via cftrade
    python -m backtests.generate --events 1000000 --seed 1 --out /tmp/1m.npz

The same options and seed give the same bytes (no wall clock, no OS randomness anywhere:
the header's ``created_us`` is the simulated start).  One hour of the demo market
(configs/exchange.yaml, two books) is about 26,000 lines and takes about 2 s.

From code::

    result = generate("out.jsonl", GenerateOptions(hours=1, seed=7))
    result.exchange.book(*XBT_GBP.codes)        # the exchange's book at the end
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from backtests.recording import Header, RecordingWriter, read_jsonl, save_npz
from engine.errors import CoinfloorError, ConfigError
from engine.protocol.messages import (
    Notice,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
)
from engine.scale import market_by_name

if TYPE_CHECKING:
    from engine.exchange.core import Exchange
    from engine.exchange.participants import MarketSimulator

__all__ = ["DEFAULT_CONFIG", "DEFAULT_START_US", "GenerateOptions", "GenerateResult", "generate", "main"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "exchange.yaml"
DEFAULT_START_US = 1_700_000_000_000_000
"""2023-11-14T22:13:20Z: a fixed simulated start keeps the output reproducible."""


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """What to simulate and how the watcher receives it."""

    hours: float = 1.0
    """Simulated hours to record (after the warm-up)."""
    seed: int = 1
    """Seeds the participants (replacing ``participants.seed``), the exchange's stochastic
    rounding and the feed jitter."""
    config: str | Path = DEFAULT_CONFIG
    """Exchange YAML (settings + ``participants``), as for ``cftrade exchange``."""
    markets: tuple[str, ...] | None = None
    """Markets to record; default: every market the participants trade."""
    feed_latency_us: int = 1000
    """Exchange event -> local receive time."""
    jitter_us: int = 0
    """Extra receive delay drawn uniformly from [0, jitter_us] (clamped so that the order of
    the feed is kept: a notice is never received before the one sent ahead of it)."""
    warmup_s: float = 60.0
    """Simulated seconds before the watcher subscribes, so that the snapshot holds a book."""
    start_us: int = DEFAULT_START_US
    max_lines: int | None = None
    """Stop after exactly this many lines after the header (a 1 M-event file: 1_000_000)."""
    ticker_refresh_s: float = 60.0
    """As the server does: push 24-hour window changes to ticker watchers this often."""

    def __post_init__(self) -> None:
        if not self.hours > 0 and self.max_lines is None:
            raise ConfigError(f"hours must be > 0, was {self.hours}")
        if self.hours < 0:
            raise ConfigError(f"hours must be >= 0, was {self.hours}")
        if self.feed_latency_us < 0 or self.jitter_us < 0:
            raise ConfigError(f"feed latency and jitter must be >= 0 us, were {self.feed_latency_us} and {self.jitter_us}")
        if self.warmup_s < 0:
            raise ConfigError(f"warmup_s must be >= 0, was {self.warmup_s}")
        if self.max_lines is not None and self.max_lines < 1:
            raise ConfigError(f"max_lines must be >= 1, was {self.max_lines}")
        if not self.ticker_refresh_s > 0:
            raise ConfigError(f"ticker_refresh_s must be > 0, was {self.ticker_refresh_s}")


@dataclass(slots=True)
class GenerateResult:
    path: Path | None
    lines: int
    """Lines after the header."""
    simulated_s: float
    wall_s: float
    exchange: Exchange
    simulator: MarketSimulator
    header: Header

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.path) if self.path is not None else None,
            "lines": self.lines,
            "simulated_hours": round(self.simulated_s / 3600, 4),
            "wall_s": round(self.wall_s, 3),
            "lines_per_s": round(self.lines_per_second),
            "lines_per_simulated_hour": round(self.lines / (self.simulated_s / 3600)) if self.simulated_s else 0,
            "participants": self.simulator.statistics()["roles"],
        }


class _Stop(Exception):
    pass


def generate(out: str | Path, options: GenerateOptions | None = None) -> GenerateResult:
    """Simulate and write a recording to ``out`` (``.npz``: the columnar form, else JSONL)."""
    from engine.exchange.cli import load_config
    from engine.exchange.participants import MarketSimulator

    opts = options or GenerateOptions()
    cfg_path = Path(opts.config)
    xcfg = load_config(cfg_path)
    pcfg = msgspec.structs.replace(xcfg.participants, seed=opts.seed, enabled=True)
    settings = xcfg.exchange_settings(participants=False)
    names = opts.markets or tuple(m.market for m in pcfg.markets)
    markets = [market_by_name(n) for n in names]
    listed = {ms.market.codes for ms in settings.markets}
    for m in markets:
        if m.codes not in listed:
            raise ConfigError(f"{cfg_path}: market {m.name} is not one of the exchange's markets")

    header = Header(
        markets=tuple(m.name for m in markets),
        api_version=settings.api_version,
        source="cftrade-generate",
        user_id=None,
        created_us=opts.start_us,
        meta={
            "watch_depth": settings.watch_depth,
            "generator": {
                "seed": opts.seed,
                "hours": opts.hours,
                "max_lines": opts.max_lines,
                "config": cfg_path.name,
                "config_sha256": hashlib.sha256(cfg_path.read_bytes()).hexdigest(),
                "feed_latency_us": opts.feed_latency_us,
                "jitter_us": opts.jitter_us,
                "warmup_s": opts.warmup_s,
                "start_us": opts.start_us,
            },
        },
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    npz = out_path.suffix == ".npz"
    jsonl_path = out_path.with_name(out_path.name + ".jsonl.part") if npz else out_path
    wall0 = time.perf_counter()
    sim = MarketSimulator.standalone(settings, pcfg, start_us=opts.start_us, seed=opts.seed)
    clock = sim.clock
    assert clock is not None
    exchange = sim.exchange
    rng = random.Random(f"{opts.seed}:feed")
    latency, jitter = opts.feed_latency_us, opts.jitter_us
    limit = opts.max_lines if opts.max_lines is not None else -1
    writer = RecordingWriter(jsonl_path, header, flush_every=16384)
    state = {"last": 0, "written": 0}

    def receive_time() -> int:
        t = clock.now_us + latency
        if jitter:
            t += rng.randint(0, jitter)
        last = state["last"]
        if t < last:
            t = last
        state["last"] = t
        return t

    def deliver(n: Notice) -> None:
        # Called synchronously by the core, in engine order, inside a command: never raise.
        if state["written"] == limit:
            return
        writer.notice(receive_time(), n)
        state["written"] += 1

    try:
        step = 1_000_000
        refresh_us = int(opts.ticker_refresh_s * 1_000_000)
        t = opts.start_us
        warm_end = opts.start_us + int(opts.warmup_s * 1_000_000)
        while t < warm_end:
            t = min(t + step, warm_end)
            sim.step_until(t)
        watcher = exchange.open_session(deliver, server_nonce=b"\0" * 16)
        for m in markets:
            for cmd, kind in ((WatchOrders(base=m.base.code, counter=m.counter.code, watch=True), "orders"),
                              (WatchTicker(base=m.base.code, counter=m.counter.code, watch=True), "ticker")):
                if state["written"] == limit:
                    break
                reply = exchange.handle(watcher, cmd)
                if kind == "orders":
                    assert isinstance(reply, WatchOrdersReply)
                    writer.snapshot(receive_time(), m, reply)
                else:
                    assert isinstance(reply, WatchTickerReply)
                    writer.ticker(receive_time(), m, reply)
                state["written"] += 1
        end = t + int(opts.hours * 3_600_000_000) if opts.max_lines is None or opts.hours > 0 else None
        next_refresh = t + refresh_us
        hour = 0
        while end is None or t < end:
            if state["written"] == limit or sim.next_event_us() is None:
                break
            t = t + step if end is None else min(t + step, end)
            sim.step_until(t)
            if t >= next_refresh:
                exchange.refresh_tickers()
                next_refresh += refresh_us
            h = (t - warm_end) // 3_600_000_000
            if h != hour:
                hour = h
                print(f"generate: {h} simulated h, {state['written']} lines", file=sys.stderr, flush=True)
    finally:
        writer.close()
    simulated = (t - warm_end) / 1e6
    if npz:
        try:
            save_npz(read_jsonl(jsonl_path), out_path)
        finally:
            os.unlink(jsonl_path)
    wall = time.perf_counter() - wall0
    return GenerateResult(out_path, state["written"], simulated, wall, exchange, sim, header)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The generator's options (shared with ``cftrade record --generate``)."""
    p.add_argument("--hours", type=float, default=None,
                   help="simulated hours to record (default: 1, or until --events lines are written)")
    p.add_argument("--seed", type=int, default=1, help="master seed (default: %(default)s)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="exchange YAML with participants (default: %(default)s)")
    p.add_argument("--markets", nargs="+", metavar="MARKET", help="markets to record (default: all simulated)")
    p.add_argument("--events", type=int, metavar="N",
                   help="stop after exactly N lines after the header (with --hours 0: however long it takes)")
    p.add_argument("--feed-latency-us", type=int, default=1000, help="receive time - exchange time (default: %(default)s)")
    p.add_argument("--jitter-us", type=int, default=0, help="extra uniform receive delay, order kept (default: 0)")
    p.add_argument("--warmup", type=float, default=60.0, help="simulated seconds before subscribing (default: %(default)s)")


def options_from_args(args: argparse.Namespace) -> GenerateOptions:
    hours = args.hours
    if hours is None:
        hours = 0.0 if args.events is not None else 1.0  # --events alone: run until the count
    return GenerateOptions(
        hours=hours, seed=args.seed, config=args.config,
        markets=tuple(args.markets) if args.markets else None,
        feed_latency_us=args.feed_latency_us, jitter_us=args.jitter_us, warmup_s=args.warmup,
        max_lines=args.events,
    )


def run(args: argparse.Namespace, prog: str) -> int:
    if not args.out:
        print(f"{prog}: --out FILE is required", file=sys.stderr)
        return 2
    try:
        opts = options_from_args(args)
        result = generate(args.out, opts)
    except CoinfloorError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backtests.generate",
                                description="Write a seeded recording of the simulated local market.")
    p.add_argument("--out", required=True, help="output file (.npz: columnar, else JSONL)")
    add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args, "generate")


if __name__ == "__main__":
    raise SystemExit(main())
