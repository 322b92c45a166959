"""``cftrade record``: capture a market into a ``cftrade-rec/1`` recording (docs/RECORDING.md).

::

    cftrade record --out market.jsonl --duration 600            # the embedded local exchange
    cftrade record --out market.npz --url ws://127.0.0.1:8765/  # any Coinfloor-protocol endpoint
    cftrade record --out mm.jsonl --config configs/market_maker.yaml --duration 60
    cftrade record --generate --hours 2 --seed 7 --out 2h.npz   # simulated, virtual time, seconds
    cftrade record --convert 2h.npz --out 2h.jsonl               # JSONL <-> npz (validated)
    cftrade record --check 2h.jsonl                              # validate; problems with line numbers

Live recording subscribes WatchOrders and WatchTicker for each market through the project's
:class:`~engine.client.reconnect.ReconnectingClient` and writes every notice, snapshot and
ticker reply with its local receive time (trio's clock mapped to wall-clock microseconds).
A lost connection is written as a ``gap`` line; the client reconnects, re-subscribes, and
the new snapshots follow.  Ctrl-C (or ``--duration``) ends the recording cleanly.

``--config`` takes a run config (a YAML with ``strategies:``: its ``exchange:`` section and
``markets`` are used; with ``url`` and credentials the session is authenticated, so the
recording also holds that user's own-order notices) or an exchange YAML (the embedded
exchange is started from it).  Without ``--config`` and ``--url``: the embedded exchange of
configs/exchange.yaml with its simulated participants, served over WebSocket on 127.0.0.1.
``--url`` records anonymously from any endpoint (``ws://`` to loopback only).

``--generate`` runs :mod:`backtests.generate` (no network, virtual time); the same options
are available as ``python -m backtests.generate``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from backtests.recording import Header, RecordingWriter, read_jsonl, save_npz
from engine.errors import CoinfloorError, ConfigError
from engine.scale import Market, market_by_name

log = logging.getLogger("backtests.record")

DEFAULT_EXCHANGE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "exchange.yaml"


@dataclass(frozen=True, slots=True)
class RecordOptions:
    out: Path
    duration: float | None = None
    """Seconds to record; None: until cancelled (Ctrl-C)."""
    url: str | None = None
    """Record anonymously from this endpoint instead of the embedded exchange."""
    config: Path | None = None
    """A run config (``strategies:`` present) or an exchange YAML; see the module docstring."""
    markets: tuple[str, ...] | None = None
    transport: str = "tcp"
    """Embedded exchange only: "tcp" (WebSocket on 127.0.0.1) or "memory" (the same
    WebSocket protocol over trio memory streams, for virtual-time tests)."""
    seed: int | None = None
    """Embedded exchange: stochastic rounding and participants seed (default: the configs')."""
    drain: float = 0.5
    """Embedded exchange: at the end, the participants stop first and the recorder keeps
    reading this many seconds, so the file ends with the exchange's final book."""
    compress: bool = False
    """``.npz`` output only: compress the arrays."""
    handle_signals: bool = True
    dial: Any = None
    """With ``url``: how to open the byte stream (tests and in-process endpoints pass one
    returning a memory stream); default TCP (+ TLS for wss://)."""


@dataclass(slots=True)
class RecordResult:
    path: Path
    lines: int
    """Lines written after the header."""
    header: Header
    exchange: Any = None
    """The embedded exchange (None for --url)."""


@dataclass(slots=True)
class _Target:
    url: str
    credentials: Any
    insecure: bool
    markets: tuple[Market, ...]
    dial: Any = None
    user_id: int | None = None


def _is_run_config(path: Path) -> bool:
    """A run config has a top-level ``strategies:`` key; an exchange YAML does not.  (Only
    composed here, never constructed; the real load is strict: engine.configload.)"""
    import yaml

    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    if not isinstance(node, yaml.MappingNode):
        return False
    return any(isinstance(k, yaml.ScalarNode) and k.value == "strategies" for k, _ in node.value)


class Recorder:
    """One recording session; see :func:`record`."""

    def __init__(self, options: RecordOptions) -> None:
        self.options = options
        self.exchange: Any = None
        self.server: Any = None
        self.writer: RecordingWriter | None = None
        self._epoch_us = 0
        self._nursery: trio.Nursery | None = None
        self._participants: trio.CancelScope | None = None
        self._stop = trio.Event()

    def stop(self) -> None:
        """End the recording (the same as Ctrl-C): participants stop, the feed drains."""
        self._stop.set()

    def clock_us(self) -> int:
        return self._epoch_us + int(trio.current_time() * 1_000_000)

    async def run(self, *, task_status: trio.TaskStatus[Recorder] = trio.TASK_STATUS_IGNORED) -> RecordResult:
        """Record (see :func:`record`); a single error from inside is raised as itself."""
        opts = self.options
        if opts.url is not None:  # refuse a bad target before anything starts (X2)
            from engine.client.urls import check_url

            check_url(opts.url, allow_insecure=opts.url.startswith("ws://"))
        try:
            return await self._run(task_status)
        except BaseExceptionGroup as group:
            raise _single(group) from None

    async def _run(self, task_status: trio.TaskStatus[Recorder]) -> RecordResult:
        from engine.client.reconnect import ReconnectingClient

        opts = self.options
        self._epoch_us = time.time_ns() // 1000 - int(trio.current_time() * 1_000_000)
        out = Path(opts.out)
        npz = out.suffix == ".npz"
        jsonl = out.with_name(out.name + ".jsonl.part") if npz else out
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            target = await self._target(nursery)
            header = Header(
                markets=tuple(m.name for m in target.markets),
                api_version=self._api_version(),
                source=target.url if self.exchange is None else f"embedded:{target.url}",
                user_id=target.user_id,
                created_us=self.clock_us(),
                meta={"recorder": "cftrade record"},
            )
            self.writer = writer = RecordingWriter(jsonl, header)
            try:
                client = ReconnectingClient(
                    target.url, target.credentials, allow_insecure=target.insecure, dial=target.dial,
                    rng=random.Random(opts.seed),
                )
                await nursery.start(client.run)
                nursery.start_soon(self._consume, client, writer)
                for m in target.markets:
                    await client.watch_orders(m.base.code, m.counter.code)
                    await client.watch_ticker(m.base.code, m.counter.code)
                task_status.started(self)
                if opts.handle_signals and threading.current_thread() is threading.main_thread():
                    nursery.start_soon(self._signals)
                with trio.move_on_after(opts.duration if opts.duration is not None else float("inf")):
                    await self._stop.wait()
                if self._participants is not None:
                    self._participants.cancel()
                    await trio.sleep(opts.drain)
                nursery.cancel_scope.cancel()
            finally:
                writer.close()
        lines = writer.lines - 1
        if npz:
            try:
                save_npz(read_jsonl(jsonl), out, compress=opts.compress)
            finally:
                os.unlink(jsonl)
        return RecordResult(out, lines, header, self.exchange)

    def _api_version(self) -> int:
        if self.exchange is not None:
            return int(self.exchange.settings.api_version)
        return 2

    async def _consume(self, client: Any, writer: RecordingWriter) -> None:
        record, clock = writer.record, self.clock_us
        async for ev in client.notices:
            record(ev, clock())

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                log.info("stopping the recording")
                self._stop.set()
                return

    # -- where to record from -------------------------------------------------------------

    async def _target(self, nursery: trio.Nursery) -> _Target:
        opts = self.options
        markets = tuple(market_by_name(m) for m in opts.markets) if opts.markets else None
        if opts.url is not None:
            return _Target(opts.url, None, opts.url.startswith("ws://"), markets or (market_by_name("XBT:GBP"),),
                           dial=opts.dial)
        cfg_path = opts.config
        exchange_yaml: Path | None = None
        seed = opts.seed
        if cfg_path is not None and _is_run_config(cfg_path):
            from engine.config import load_run_config

            run_cfg = load_run_config(str(cfg_path))
            cfg_markets = tuple(run_cfg.market_infos) or tuple(s.market_info for s in run_cfg.strategies)
            markets = markets or tuple(dict.fromkeys(cfg_markets))
            if seed is None:
                seed = run_cfg.run.seed
            ex = run_cfg.exchange
            if not ex.embedded:
                from engine.connection import Credentials

                assert ex.url is not None and ex.cookie is not None and ex.passphrase is not None and ex.user_id
                creds = Credentials(ex.user_id, ex.cookie.resolve(), ex.passphrase.resolve())
                return _Target(ex.url, creds, ex.url.startswith("ws://"), markets, user_id=ex.user_id)
            exchange_yaml = Path(ex.config) if ex.config else None
        elif cfg_path is not None:
            exchange_yaml = cfg_path
        return await self._embedded(nursery, exchange_yaml or DEFAULT_EXCHANGE_CONFIG, markets, seed)

    async def _embedded(self, nursery: trio.Nursery, path: Path, markets: tuple[Market, ...] | None,
                        seed: int | None) -> _Target:
        from engine.exchange.cli import load_config
        from engine.exchange.core import Exchange
        from engine.exchange.participants import MarketSimulator, run_participants
        from engine.exchange.server import ExchangeServer, serve_exchange

        xcfg = load_config(path)
        settings = xcfg.exchange_settings(participants=xcfg.participants.enabled)
        rng_seed = seed if seed is not None else (settings.seed if settings.seed is not None else 0)
        self.exchange = exchange = Exchange(settings, clock_us=self.clock_us, rng=random.Random(rng_seed))
        if self.options.transport == "memory":
            self.server = ExchangeServer(exchange, **xcfg.server.server_options())
            url = "ws://127.0.0.1:1/"

            async def dial(target: Any) -> trio.abc.Stream:
                client_end, server_end = trio.testing.memory_stream_pair()
                nursery.start_soon(self.server.handle_stream, server_end)
                return client_end

            dial_fn: Callable[..., Any] | None = dial
        else:
            self.server = await nursery.start(functools.partial(serve_exchange, exchange, "127.0.0.1", 0,
                                                                **xcfg.server.server_options()))
            url = self.server.url
            dial_fn = None
        if xcfg.participants.enabled:
            pcfg = xcfg.participants
            if seed is not None:
                import msgspec

                pcfg = msgspec.structs.replace(pcfg, seed=seed)
            sim = MarketSimulator(exchange, pcfg, start_us=self.clock_us())
            scope = trio.CancelScope()
            self._participants = scope

            async def participants(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await run_participants(sim, self.clock_us, task_status=task_status)

            await nursery.start(participants)
        all_markets = tuple(ms.market for ms in settings.markets)
        log.info("embedded exchange at %s (%s)", url, self.options.transport)
        return _Target(url, None, True, markets or all_markets, dial=dial_fn)


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one leaf of a nursery's exception group (e.g. a ConfigError), else the group."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    return leaves[0] if len(leaves) == 1 else group


async def record(options: RecordOptions, *, task_status: trio.TaskStatus[Recorder] = trio.TASK_STATUS_IGNORED
                 ) -> RecordResult:
    """Record until ``options.duration`` passes or the caller cancels; returns what was written.

    ``recorder = await nursery.start(record, options)`` returns once the subscriptions are
    in place (``recorder.exchange`` is the embedded exchange, if any)."""
    return await Recorder(options).run(task_status=task_status)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cftrade record", description="Record a market into a cftrade-rec/1 file.")
    p.add_argument("--out", help="output file (.npz: columnar, else JSON Lines)")
    p.add_argument("--config", type=Path, help="run config (its exchange and markets) or exchange YAML")
    p.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    p.add_argument("--url", help="record anonymously from this endpoint (ws:// to loopback only)")
    p.add_argument("--seed", type=int, help="embedded exchange seed (default: the config's); with --generate too")
    p.add_argument("--compress", action="store_true", help=".npz output: compress")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g = p.add_argument_group("simulated recording (no network, virtual time)")
    g.add_argument("--generate", action="store_true", help="generate with the seeded simulator instead")
    g.add_argument("--hours", type=float, default=None, help="--generate: simulated hours (default: 1)")
    g.add_argument("--events", type=int, metavar="N", help="--generate: stop after exactly N lines")
    g.add_argument("--feed-latency-us", type=int, default=1000, help="--generate: receive - exchange time")
    g.add_argument("--jitter-us", type=int, default=0, help="--generate: extra uniform receive delay")
    g.add_argument("--warmup", type=float, default=60.0, help="--generate: simulated seconds before subscribing")
    g.add_argument("--markets", nargs="+", metavar="MARKET", help="markets to record (default: see above)")
    f = p.add_argument_group("files")
    f.add_argument("--convert", metavar="SRC", help="convert SRC to --out (.npz: columnar, else JSONL)")
    f.add_argument("--check", metavar="FILE", help="validate FILE and print the report as JSON")
    return p


def _files(args: argparse.Namespace) -> int:
    from backtests.recording import convert, load, validate

    try:
        if args.check:
            report = validate(load(args.check, check=False))
            print(json.dumps(report.summary(), indent=2))
            return 0 if report.ok else 1
        if not args.out:
            print("cftrade record: --convert needs --out FILE", file=sys.stderr)
            return 2
        rec = convert(args.convert, args.out, compress=args.compress)
    except CoinfloorError as e:
        print(f"cftrade record: {e}", file=sys.stderr)
        return 1
    print(f"cftrade record: {len(rec)} lines converted to {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check or args.convert:
        return _files(args)
    if args.generate:
        from backtests import generate

        if args.url:
            print("cftrade record: --generate and --url exclude each other", file=sys.stderr)
            return 2
        if args.seed is None:
            args.seed = 1
        if args.config is None:
            args.config = str(generate.DEFAULT_CONFIG)
        return generate.run(args, "cftrade record")
    if not args.out:
        print("cftrade record: --out FILE is required", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print("cftrade record: --duration must be > 0", file=sys.stderr)
        return 2
    if args.url and args.config:
        print("cftrade record: give --url or --config, not both", file=sys.stderr)
        return 2
    opts = RecordOptions(out=Path(args.out), duration=args.duration, url=args.url, config=args.config,
                         markets=tuple(args.markets) if args.markets else None, seed=args.seed,
                         compress=args.compress)
    try:
        result = trio.run(record, opts)
    except CoinfloorError as e:
        print(f"cftrade record: {e}", file=sys.stderr)
        return 2
    print(f"cftrade record: {result.lines} lines written to {result.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
