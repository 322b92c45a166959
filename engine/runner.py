"""The live runner: one trio nursery for the connection, market data, the governor and strategies.

::

    result = await Runner(config, RunOptions(duration=60)).run()

Tasks in the nursery (all driving one :class:`~engine.runtime.TradingCore`, which is plain
synchronous code, so no two tasks ever interleave inside a state change):

* the **exchange** (``exchange: embedded``): the local Coinfloor-protocol exchange and its
  simulated participants, served on a loopback port; we trade with it over real WebSocket;
* the **connection**: a :class:`~engine.client.reconnect.ReconnectingClient` that
  reconnects with backoff, re-authenticates and re-subscribes; on every (re)connect the
  ``reconcile`` callback runs GetBalances and GetOrders *before* anything else is sent;
* the **event loop**: the ordered notice stream -> TradingCore (book, orders, balances,
  positions, strategy hooks, risk) -> commands in ``core.outbox`` -> the one writer of order
  commands (pipelined through the rate-limit governor; replies awaited by one task each);
* **timers** per strategy, the periodic **audit** (GetOrders), the risk poll (kill file),
  the **status** display, and a loop-stall **watchdog** thread (RELIABILITY F9).

Start-up barrier (F5): no strategy hook runs until the first reconciliation has passed and
every market's book snapshot is loaded.  A strategy's exception halts that strategy only
(F14).  SIGINT/SIGTERM (F15): strategies stop, every own open order is cancelled one by one
(never the user-wide CancelAllOrders, which would reset the tonce counter of other processes),
confirmations are awaited up to a deadline, and the run ends with exit status 0.

Latency (``cftrade bench latency``): the connection's reader task calls :meth:`Runner._inline`
after every frame, which takes the queued events, runs the core on them and writes the
resulting commands to the socket at once (``send_nowait``), all without a task switch.  The
``_events`` and ``_dispatch`` tasks do the same work whenever the inline path cannot: events
queued by anyone else, a governor with no token left (waiting is their job, never the
reader's), a socket that is not taking bytes, a reconnect in progress.  Both paths take
events and commands strictly in order and never hold one across a checkpoint, so the order
guarantees are those of a single consumer and a single writer: PlaceOrder tonces reach the
wire increasing, a cancel after its place, events in wire order.

Lost replies (F1): a PlaceOrder whose reply is lost leaves the order UNKNOWN; it is never
resent blindly.  The reconciliation after the reconnect settles it (open on the exchange ->
OPEN, absent -> settled), so a lost reply can never create a duplicate order.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import secrets
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from engine.client.notices import FeedGap, ReplyEvent, SessionEnded, SessionStarted
from engine.client.reconnect import ReconnectingClient
from engine.config import RunConfig
from engine.connection import Connection, Credentials, ReplyWaiter
from engine.errors import (
    CoinfloorError,
    ConnectionLost,
    ExchangeError,
    RemoteProtocolError,
    TonceOutOfSequence,
)
from engine.governor import Governor
from engine.protocol.messages import (
    CancelOrderReply,
    ErrorReply,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    GetOrdersReply,
    GetTradeVolume,
    GetTradeVolumeReply,
    PlaceOrderReply,
    WatchOrders,
    WatchOrdersReply,
)
from engine.risk import RiskGovernor
from engine.runtime import Outgoing, TradingCore
from engine.scale import Market, market_by_codes
from engine.secret import Secret
from engine.state.orders import Order
from engine.state.tonces import TonceAllocator

log = logging.getLogger("engine.runner")

DEMO_USER_ID = 1
DEMO_COOKIE = "HGREqcILTz8blHa/jsUTVTNBJlg="  # AUTH.md's public example: demo account only
DEMO_PASSPHRASE = "opensesame"  # noqa: S105 - AUTH.md's public example, local exchange only
DEFAULT_EXCHANGE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "exchange.yaml"
TONCE_LEASE_US = 10_000_000


@dataclass(frozen=True, slots=True)
class RunOptions:
    duration: float | None = None
    """Seconds to trade; None runs until a signal (or the config's run.duration)."""
    live: bool = False
    """--live: required (with the config's ``live: true``) for a non-local endpoint (X11)."""
    status: bool = True
    """Show the live terminal status (on stderr)."""
    status_interval: float = 1.0
    summary_path: Path | None = None
    shutdown_deadline: float = 5.0
    request_timeout: float = 10.0
    connect_timeout: float = 30.0
    """The first session must be up within this; later drops reconnect without limit."""
    audit_interval: float = 30.0
    watchdog_seconds: float = 10.0
    """A trio loop stalled this long is a crash (F9); 0 disables the watchdog."""
    handle_signals: bool = True
    transport: str = "tcp"
    """Embedded exchange only: "tcp" (a real WebSocket on 127.0.0.1, the default) or
    "memory" (the same WebSocket protocol over trio memory streams, so tests can run hours of
    virtual time under ``autojump_clock``; real sockets would make autojump skip I/O waits)."""
    drop_hook: Any = None
    """Tests: called as ``drop_hook(client_end, server_end)`` with both ends of each new
    memory connection, before it is used (fault injection, taps)."""


@dataclass(slots=True)
class RunResult:
    """What a run did; ``summary`` is also written as JSON."""

    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)


class Runner:
    """Runs the strategies of one :class:`RunConfig` (see the module docstring)."""

    def __init__(self, config: RunConfig, options: RunOptions | None = None) -> None:
        self.config = config
        self.options = options or RunOptions()
        self.core: TradingCore | None = None
        self.client: ReconnectingClient | None = None
        self.exchange: Any = None
        self.server: Any = None
        self._dial: Any = None
        self.url: str | None = None
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._started = trio.Event()
        self._reconciled = trio.Event()
        self._books_ready = trio.Event()
        self._outq: deque[Outgoing] = deque()  # the core's commands, not yet written
        self._out_lot = trio.lowlevel.ParkingLot()  # the dispatcher parks here
        self._writing = False  # a send of an order command is in progress (single writer)
        self._inline_error: BaseException | None = None
        self._pop_event: Callable[[], Any] = lambda: None  # the client queue's pop_nowait once connected
        self._replies: deque[tuple[float, Outgoing, ReplyWaiter]] = deque()  # by deadline
        self._epoch_us = 0
        self._now: Callable[[], float] = trio.current_time
        self._t0 = 0.0
        self._heartbeat = time.monotonic()
        self.errors: list[str] = []
        # Why the run ended, for the summary: "duration", "SIGINT", "SIGTERM", "stop()",
        # "failed" (see errors); None while it runs.
        self.ended: str | None = None
        self.failure: str | None = None  # set when the run must end as failed (exit 1)
        self.sent = {"place": 0, "cancel": 0}
        self.sessions = 0
        self.startup_s = 0.0
        self.recorder: Any = None
        """With ``recording.enabled``: the backtests.recording writer of this session."""

    # -- clocks ----------------------------------------------------------------------------

    def clock_us(self) -> int:
        """Exchange-style microseconds, derived from trio's clock (virtual in tests)."""
        return self._epoch_us + int(self._now() * 1_000_000)

    # -- entry point -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Runner] = trio.TASK_STATUS_IGNORED) -> RunResult:
        cfg, opts = self.config, self.options
        cfg.exchange.assert_live_allowed(opts.live)
        # trio's clock itself: the same reading as trio.current_time() (virtual in tests)
        # with two Python calls fewer; the core reads it several times per order.
        self._now = trio.lowlevel.current_clock().current_time
        self._epoch_us = time.time_ns() // 1000 - int(trio.current_time() * 1_000_000)
        self._t0 = trio.current_time()
        duration = opts.duration if opts.duration is not None else cfg.run.duration
        self.core = self._build_core(Path(cfg.run.state_dir))
        exit_code = 0
        watchdog = _Watchdog(opts.watchdog_seconds, self) if opts.watchdog_seconds > 0 else None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if watchdog is not None:
                    watchdog.start()
                    nursery.start_soon(self._beat)
                url, creds, insecure = await self._exchange(nursery)
                self.url = url
                self.recorder = self._open_recorder()
                self.client = ReconnectingClient(
                    url, creds, governor=self._governor(), allow_insecure=insecure,
                    on_connected=self._reconcile, rng=random.Random(cfg.run.seed), dial=self._dial,
                )
                try:
                    with trio.fail_after(opts.connect_timeout):
                        await nursery.start(self.client.run)
                except trio.TooSlowError:
                    raise ConnectionLost(
                        f"no session with {url} within {opts.connect_timeout:g} s (reconnecting with backoff)"
                    ) from None
                nursery.start_soon(self._events)
                nursery.start_soon(self._dispatch)
                nursery.start_soon(self._reply_timeouts)
                # The client's queue is one for its whole life (all sessions): bind its
                # pop once, not through the client's property once per frame.
                self._pop_event = self.client.notices.pop_nowait
                self.client.after_frame = self._inline
                for m in self.core.books:
                    await self.client.watch_orders(m.base.code, m.counter.code)
                    await self.client.watch_ticker(m.base.code, m.counter.code)
                await self._barrier()
                self.startup_s = trio.current_time() - self._t0
                self._t0 = trio.current_time()  # status and elapsed_s count trading time
                self.core.start()
                self._flush()
                self._started.set()
                task_status.started(self)
                for name, slot in self.core.slots.items():
                    interval = getattr(slot.strategy.p, "timer_interval", None)
                    if interval:
                        nursery.start_soon(self._timer, name, float(interval))
                if any(slot.book_interval_us for slot in self.core.slots.values()):
                    nursery.start_soon(self._conflated_books)
                nursery.start_soon(self._audit)
                nursery.start_soon(self._risk_poll)
                if opts.status:
                    nursery.start_soon(self._status)
                if opts.handle_signals and threading.current_thread() is threading.main_thread():
                    nursery.start_soon(self._signals)
                with trio.move_on_after(duration if duration is not None else float("inf")) as timer:
                    await self._stop.wait()
                if timer.cancelled_caught:
                    self.ended = "duration"
                await self._shutdown()
                if self.failure is not None:
                    self.errors.append(self.failure)
                    self.ended = "failed"
                    exit_code = 1
                nursery.cancel_scope.cancel()
        except* ExchangeError as group:
            # A definitive refusal (Authenticate error 7, ...) reaches us wrapped by the
            # nursery: a failed run (exit 1, summary written), not a traceback.
            for e in _leaves(group):
                self.errors.append(f"exchange refused: {e}")
                log.error("run failed: %s", e)
            exit_code = 1
            self.ended = "failed"
        except* (CoinfloorError, trio.TooSlowError, OSError) as group:
            # Connect failures, a start-up barrier that never completes, a config problem
            # found late: a failed run with a one-line reason and a summary, not a traceback.
            for e in _leaves(group):
                why = "start-up barrier timed out" if isinstance(e, trio.TooSlowError) else f"{type(e).__name__}: {e}"
                self.errors.append(why)
                log.error("run failed: %s", why)
            exit_code = 1
            self.ended = "failed"
        finally:
            if watchdog is not None:
                watchdog.stop()
            if self.recorder is not None:
                self.recorder.close()
            if self.core is not None:
                # Release the user's tonce lock: a restart in the same process (a supervisor,
                # a test) must be able to take it again.
                self.core.tonces.close()
        result = RunResult(exit_code, self.summary())
        if opts.summary_path is not None:
            opts.summary_path.parent.mkdir(parents=True, exist_ok=True)
            opts.summary_path.write_text(json.dumps(result.summary, indent=2) + "\n")
        return result

    def stop(self) -> None:
        """Ask the run to shut down gracefully (same as SIGINT)."""
        if self.ended is None:
            self.ended = "stop()"
        self._stop.set()

    # -- set-up ----------------------------------------------------------------------------

    def _build_core(self, state_dir: Path) -> TradingCore:
        cfg = self.config
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        risk = RiskGovernor(
            cfg.user_risk(), state_path=state_dir / "risk.json", now=self._now,
            kill_file=state_dir / "KILL", scales=cfg.scales,
        )
        user = cfg.exchange.user_id if not cfg.exchange.embedded else DEMO_USER_ID
        # A 10 s lease: the high-water mark on disk runs 10 s of tonces (µs) ahead, so the
        # fsync'd write happens about every 10 s instead of before every PlaceOrder (it was
        # ~0.6 ms of each tick-to-order, bench latency).  A restart starts above the lease.
        tonces = TonceAllocator(state_dir / f"tonces-{user}.json", clock=self.clock_us, user_id=user,
                                lease_us=TONCE_LEASE_US)
        markets = list(cfg.market_infos) or [s.market_info for s in cfg.strategies]
        core = TradingCore(markets=markets, risk=risk, tonces=tonces, clock=self._now,
                           clock_us=self.clock_us, scales=cfg.scales)
        for spec in cfg.strategies:
            cls = spec.strategy_class
            core.add_strategy(spec.name, cls(spec.name, spec.params), spec.market_info, cfg.strategy_risk(spec.name))
        return core

    def _governor(self) -> Governor:
        # Strategy intents are held to ``safety_factor`` x LIMITS.md by the risk governor;
        # the transport governor enforces the exchange's exact numbers, so the gap between
        # the two is a reserve that shutdown and kill-switch cancels can always use.
        return Governor(safety_factor=1.0, algorithm=self.config.rate_limits.algorithm)

    async def _exchange(self, nursery: trio.Nursery) -> tuple[str, Credentials, bool]:
        ex = self.config.exchange
        if not ex.embedded:
            assert ex.url is not None and ex.cookie is not None and ex.passphrase is not None and ex.user_id
            creds = Credentials(ex.user_id, ex.cookie.resolve(), ex.passphrase.resolve())
            return ex.url, creds, ex.url.startswith("ws://")
        from engine.exchange.cli import load_config
        from engine.exchange.core import Exchange
        from engine.exchange.participants import MarketSimulator, run_participants
        from engine.exchange.server import serve_exchange

        xcfg = load_config(ex.config or DEFAULT_EXCHANGE_CONFIG)
        settings = xcfg.exchange_settings(participants=xcfg.participants.enabled)
        seed = self.config.run.seed
        self.exchange = Exchange(settings, clock_us=self.clock_us, rng=random.Random(seed))
        if self.options.transport == "memory":
            from engine.exchange.server import ExchangeServer

            self.server = ExchangeServer(self.exchange, **xcfg.server.server_options())
            server_url = "ws://127.0.0.1:1/"
            self._dial = self._memory_dial
        else:
            server = await nursery.start(functools.partial(serve_exchange, self.exchange, "127.0.0.1", 0,
                                                           **xcfg.server.server_options()))
            self.server = server
            server_url = server.url
        if xcfg.participants.enabled:
            sim = MarketSimulator(self.exchange, xcfg.participants, start_us=self.clock_us())
            await nursery.start(run_participants, sim, self.clock_us)
        log.info("embedded exchange at %s (%s)", server_url, self.options.transport)
        creds = Credentials(DEMO_USER_ID, Secret(DEMO_COOKIE, "cookie"), Secret(DEMO_PASSPHRASE, "passphrase"))
        return server_url, creds, True

    async def _memory_dial(self, target: Any) -> trio.abc.Stream:
        """A client stream whose other end is served by the embedded exchange in-process."""
        client_end, server_end = trio.testing.memory_stream_pair()
        if self.options.drop_hook is not None:
            self.options.drop_hook(client_end, server_end)
        self._nursery_start(self.server.handle_stream, server_end)
        return client_end

    async def _reconcile(self, conn: Connection) -> None:
        """Runs on every (re)connect before any other request (F1, F5)."""
        core = self.core
        assert core is not None
        self.sessions += 1
        t = trio.current_time()
        balances = await conn.request(GetBalances())
        orders = await conn.request(GetOrders())
        assert isinstance(balances, GetBalancesReply) and isinstance(orders, GetOrdersReply)
        # Trade volume per asset: the exact measure of fills whose notices died with the
        # last connection (TradingCore.infer_lost_fills; the first session sets the baseline).
        volumes: dict[int, int] = {}
        for code in dict.fromkeys(a.code for m in core.books for a in (m.base, m.counter)):
            try:
                reply = await conn.request(GetTradeVolume(asset=code))
            except ExchangeError as e:  # an exchange without it: no inference, no harm
                log.debug("GetTradeVolume(%#x) refused: %s", code, e)
                break
            if isinstance(reply, GetTradeVolumeReply):
                volumes[code] = reply.volume
        report = core.on_open_orders(orders, requested_at=t)
        if len(volumes) == len({a for m in core.books for a in (m.base, m.counter)}):
            core.infer_lost_fills(report, balances, orders, volumes)
        core.on_balances(balances)
        probe = core.probe_order()
        if probe is not None:
            await self._probe(conn, probe)
        if not report.clean:
            log.info("reconciliation: %s", report)
        self._flush()
        self._reconciled.set()

    async def _probe(self, conn: Connection, order: Order) -> None:
        """Settle a lost-fill gap that only ``order``, an in-doubt PlaceOrder, leaves
        ambiguous: send the same PlaceOrder again with its tonce (WEBSOCKET-README: that is
        what the tonce is for).  Error 3 means it was placed before; success means it was
        not, and it is placed now, as its strategy asked (the tonce rules out a duplicate)."""
        core = self.core
        assert core is not None
        command = core.resubmit_probe(order)
        self.sent["place"] += 1
        placed: bool | None
        try:
            reply = await conn.request(command)
        except TonceOutOfSequence as e:
            core.on_place_reply(order, ErrorReply(error_code=e.error_code, error_msg=e.error_msg))
            placed = True
        except ExchangeError as e:  # refused for another reason: says nothing of the first attempt
            core.on_place_reply(order, ErrorReply(error_code=e.error_code, error_msg=e.error_msg))
            placed = None
        except (ConnectionLost, RemoteProtocolError) as e:
            core.on_place_lost(order, f"connection lost: {e}")
            core.settle_probe(order, None)
            raise
        else:
            assert isinstance(reply, PlaceOrderReply)
            core.on_place_reply(order, reply)
            placed = False
        core.settle_probe(order, placed)

    async def _barrier(self) -> None:
        core = self.core
        assert core is not None
        with trio.fail_after(30):
            await self._reconciled.wait()
            if not all(b.ready for b in core.books.values()):
                await self._books_ready.wait()

    # -- recording (RecordingConfig; format: docs/RECORDING.md) -----------------------------

    def _open_recorder(self) -> Any:
        """A writer that gets every event of the notice stream with its receive time, so
        the file holds exactly what the strategies saw (snapshots, notices, own notices)."""
        cfg = self.config
        if not cfg.recording.enabled or self.core is None:
            return None
        from backtests.recording import Header, RecordingWriter

        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.clock_us() / 1e6))
        folder = Path(cfg.recording.path)
        path = folder / f"run-{stamp}-seed{cfg.run.seed}.jsonl"
        n = 1
        while path.exists():
            path = folder / f"run-{stamp}-seed{cfg.run.seed}-{n}.jsonl"
            n += 1
        header = Header(
            markets=tuple(m.name for m in self.core.books), api_version=cfg.run.api_version,
            source=("embedded:" if cfg.exchange.embedded else "") + (self.url or ""),
            user_id=DEMO_USER_ID if cfg.exchange.embedded else cfg.exchange.user_id,
            created_us=self.clock_us(),
            meta={"recorder": "cftrade run", "seed": cfg.run.seed,
                  "strategies": [s.name for s in cfg.strategies]},
        )
        log.info("recording this run to %s", path)
        return RecordingWriter(path, header)

    # -- the event loop ----------------------------------------------------------------------

    async def _events(self) -> None:
        """Consume the notice stream: whatever the reader's inline path left (see the module
        docstring), and re-raise an exception that path met, here in the runner's task."""
        client = self.client
        assert client is not None
        queue = client.notices
        while True:
            try:
                await queue.wait_event()
            except trio.EndOfChannel:
                return
            self._take_events()
            if self._inline_error is not None:
                error, self._inline_error = self._inline_error, None
                raise error

    def _inline(self) -> None:
        """Called by the connection's reader after each frame: consume the queued events and
        write the resulting orders now, in this task (plain def: never waits)."""
        if self._inline_error is not None:
            return
        try:
            # _take_events, inline (once per frame received).
            pop = self._pop_event
            while (ev := pop()) is not None:
                self._on_event(ev)
        except BaseException as e:  # raised again by _events, in the runner's own task
            self._fail(e)

    def _take_events(self) -> None:
        """Take and apply every queued event, in order (no checkpoint between taking an
        event and applying it, so the inline path and _events can never reorder them)."""
        pop = self._pop_event
        while (ev := pop()) is not None:
            self._on_event(ev)

    def _on_event(self, ev: Any) -> None:
        core = self.core
        assert core is not None
        if self.recorder is not None:
            self.recorder.record(ev, self.clock_us())
        t = type(ev)
        if t is ReplyEvent:
            assert isinstance(ev, ReplyEvent)
            cmd, reply = ev.command, ev.reply
            if isinstance(cmd, WatchOrders) and isinstance(reply, WatchOrdersReply) and cmd.watch:
                core.on_snapshot(market_by_codes(cmd.base, cmd.counter), reply)
                if all(b.ready for b in core.books.values()):
                    self._books_ready.set()
        elif t is SessionEnded:
            for m in core.books:
                core.book_gap(m)
        elif t is FeedGap:
            assert isinstance(ev, FeedGap)
            market = market_by_codes(ev.base, ev.counter)
            core.book_gap(market)
            self._nursery_start(self._resnapshot, market)
        elif t is SessionStarted:
            pass
        else:
            core.on_notice(ev)
        self._flush()

    async def _resnapshot(self, market: Market) -> None:
        assert self.client is not None
        try:
            await self.client.unwatch_orders(market.base.code, market.counter.code)
            await self.client.watch_orders(market.base.code, market.counter.code)
        except (ExchangeError, ConnectionLost) as e:
            log.warning("re-snapshot of %s failed (%s); the reconnect will restore it", market.name, e)

    def _nursery_start(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _flush(self) -> None:
        """Hand the core's new commands to the writer, in the order they were made, and
        write them now when they can go at once (:meth:`_send_nowait`)."""
        core = self.core
        assert core is not None
        outbox = core.outbox
        if outbox:
            self._outq.extend(outbox)
            outbox.clear()
            self._send_nowait()

    def _send_nowait(self) -> None:
        """Write queued commands now if no write is in progress and each can go at once
        (connection up, a governor token free, the socket taking bytes); else leave the
        rest, in order, to :meth:`_dispatch`."""
        outq, client = self._outq, self.client
        if self._writing or not outq or client is None:
            return
        self._writing = True
        try:
            while outq:
                out = outq[0]
                order = out.order
                try:
                    if out.kind == "place":
                        # A fresh command the connection may take over without the codec's
                        # check when the tracker vouched for its fields (Order.wire_checked).
                        waiter = client.send_nowait(order.to_command(), vouched=order.wire_checked)
                    else:
                        waiter = client.send_nowait(order.cancel_command())
                except trio.WouldBlock:
                    self._out_lot.unpark_all()  # the dispatcher waits for what we cannot
                    return
                except ConnectionLost:
                    self._out_lot.unpark_all()  # it reports the loss in the usual way
                    return
                except Exception as e:  # an order that cannot be cancelled by id or tonce, ...
                    outq.popleft()
                    log.warning("%s of %s not sent: %s", out.kind, order, e)
                    continue
                outq.popleft()
                self.sent[out.kind] += 1
                self._expect_reply(out, waiter)
        finally:
            self._writing = False

    async def _dispatch(self) -> None:
        """The writer of order commands whenever the inline path cannot write them, so the
        wire order is the core's order: PlaceOrder tonces arrive increasing (else error 3)
        and a cancel follows its place.  Only one of the two writes at a time
        (``_writing``); replies are awaited by separate tasks, so the pipeline never waits
        for a reply."""
        core, client = self.core, self.client
        assert core is not None and client is not None
        outq = self._outq
        while True:
            while not outq or self._writing:
                await self._out_lot.park()
            self._writing = True
            try:
                while outq:
                    out = outq.popleft()
                    order = out.order
                    try:
                        if out.kind == "place":
                            self.sent["place"] += 1
                            waiter = await client.send(order.to_command())
                        else:
                            self.sent["cancel"] += 1
                            waiter = await client.send(order.cancel_command())
                    except ConnectionLost as e:
                        if out.kind == "place":
                            core.on_place_lost(order, f"not sent: {e}")
                        else:
                            core.on_cancel_lost(order)
                        self._flush()
                        continue
                    except Exception as e:  # an order that cannot be cancelled by id or tonce, ...
                        log.warning("%s of %s not sent: %s", out.kind, order, e)
                        continue
                    self._expect_reply(out, waiter)
            finally:
                self._writing = False

    def _expect_reply(self, out: Outgoing, waiter: ReplyWaiter) -> None:
        """Apply the reply to ``out`` when it comes (a callback in the reader's task: no task
        per order); :meth:`_reply_timeouts` gives up after ``request_timeout``."""
        self._replies.append((self._now() + self.options.request_timeout, out, waiter))
        waiter.on_done(functools.partial(self._on_reply, out, waiter))

    def _on_reply(self, out: Outgoing, waiter: ReplyWaiter) -> None:
        try:
            core = self.core
            assert core is not None
            order = out.order
            try:
                reply = waiter.result()
            except ExchangeError as e:
                reply = ErrorReply(error_code=e.error_code, error_msg=e.error_msg)
            except (ConnectionLost, RemoteProtocolError) as e:
                # Lost with the connection, or a damaged reply: the outcome is UNKNOWN and
                # the reconciliation after the reconnect settles it (F1).
                if out.kind == "place":
                    core.on_place_lost(order, f"connection lost: {e}")
                else:
                    core.on_cancel_lost(order)
                self._flush()
                return
            if out.kind == "place":
                assert isinstance(reply, (PlaceOrderReply, ErrorReply))
                core.on_place_reply(order, reply)
            else:
                assert isinstance(reply, (CancelOrderReply, ErrorReply))
                core.on_cancel_reply(order, reply)
            self._flush()
        except BaseException as e:  # raised again by _events, in the runner's own task
            self._fail(e)

    def _fail(self, error: BaseException) -> None:
        """An exception in code the reader task called for us: re-raise it in _events."""
        if self._inline_error is None:
            self._inline_error = error
        if self.client is not None:
            self.client.notices.wake()

    async def _reply_timeouts(self) -> None:
        """Gives up on replies older than ``request_timeout`` (the order becomes UNKNOWN
        and the next reconciliation settles it).  Deadlines are in send order, so one
        deque and one sleep serve them all; with none pending it looks every timeout."""
        replies = self._replies
        timeout = self.options.request_timeout
        while True:
            if replies:
                await trio.sleep_until(replies[0][0])
            else:
                await trio.sleep(timeout)
            now = trio.current_time()
            while replies and replies[0][0] <= now:
                _, out, waiter = replies.popleft()
                if waiter.done:
                    continue
                waiter.abandon()
                core = self.core
                assert core is not None
                if out.kind == "place":
                    core.on_place_lost(out.order, "reply timed out")
                else:
                    core.on_cancel_lost(out.order)
                self._flush()

    # -- periodic tasks ----------------------------------------------------------------------

    async def _timer(self, name: str, interval: float) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.sleep(interval)
            core.on_timer(name)
            self._flush()

    async def _conflated_books(self) -> None:
        """Run the ``on_book`` calls that conflation (StrategyConfig.book_interval) owes, when due."""
        core = self.core
        assert core is not None
        wake = trio.Event()

        def deferred() -> None:
            wake.set()

        core.on_book_deferred = deferred
        while True:
            due = core.book_due_us()
            if due is None:
                await wake.wait()
                wake = trio.Event()
                continue
            await trio.sleep(max(0, due - self.clock_us()) / 1_000_000)
            core.fire_due_books()
            self._flush()

    async def _audit(self) -> None:
        """F13: a periodic GetOrders audit repairs divergences (within the info budget)."""
        core, client = self.core, self.client
        assert core is not None and client is not None
        while True:
            await trio.sleep(self.options.audit_interval)
            t = trio.current_time()
            try:
                reply = await client.request(GetOrders())
            except (ExchangeError, ConnectionLost) as e:
                log.info("audit skipped: %s", e)
                continue
            assert isinstance(reply, GetOrdersReply)
            report = core.on_open_orders(reply, requested_at=t)
            if not report.clean:
                log.warning("audit found divergences: %s", report)
            self._flush()

    async def _risk_poll(self) -> None:
        core = self.core
        assert core is not None
        while True:
            await trio.sleep(0.5)
            core.poll_risk()
            self._flush()
            if core.all_failed and self.failure is None:
                self.failure = "every strategy raised and is halted (see each strategy's last_error)"
                log.error("%s: ending the run", self.failure)
                self._stop.set()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    assert self.core is not None
                    log.warning("SIGUSR1: manual kill switch, halting every strategy")
                    self.core.risk.halt(None, "manual kill (SIGUSR1)")
                    self.core.poll_risk()
                    self._flush()
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name)
                if self.ended is None:
                    self.ended = signal.Signals(signum).name
                self._stop.set()
                return

    async def _beat(self) -> None:
        while True:
            self._heartbeat = time.monotonic()
            await trio.sleep(0.5)

    async def _status(self) -> None:
        while True:
            await trio.sleep(self.options.status_interval)
            _render_status(self)

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """F15: stop intake, cancel own orders one by one, wait for confirmations."""
        core = self.core
        assert core is not None
        core.stop()
        self._flush()
        with trio.move_on_after(self.options.shutdown_deadline):
            while any(o.is_open and not o.is_market for o in core.tracker.open_orders()):
                await trio.sleep(0.02)
                core.poll_risk()
                for o in core.tracker.open_orders():
                    if o.is_open and o.state.name in ("OPEN", "PARTIALLY_FILLED"):
                        core._queue_cancel(o, o.strategy)
                self._flush()
        left = [o for o in core.tracker.open_orders() if o.is_open]
        if left:
            self.errors.append(f"{len(left)} orders still open after the shutdown deadline")
            log.error("orders still open at shutdown: %s", left)

    def summary(self) -> dict[str, Any]:
        core = self.core
        out: dict[str, Any] = {
            "exchange": self.url,
            "embedded": self.config.exchange.embedded,
            "startup_s": round(self.startup_s, 3),
            "elapsed_s": round(trio.current_time() - self._t0, 3) if self._t0 else 0.0,
            "sessions": self.sessions,
            "commands_sent": dict(self.sent),
            "errors": list(self.errors),
            "ended": self.ended,
        }
        if self.recorder is not None:
            out["recording"] = str(self.recorder.path)
        if core is not None:
            out.update(core.summary())
            out["fills"] = len(core.fills)
            out["open_orders_left"] = sum(1 for o in core.tracker.open_orders() if o.is_open)
            out["books"] = {
                m.name: {"best_bid": b.best_bid, "best_ask": b.best_ask, "orders": len(b)} for m, b in core.books.items()
            }
        if self.client is not None:
            st = self.client.statistics()
            out["connection"] = {"session": st.session, "reconnects": max(self.sessions - 1, 0)}
        return out


class _Watchdog:
    """A thread that notices a stalled trio loop (F9): a strategy stuck in a busy loop or a
    blocking call.  It logs, writes the reason to stderr and exits the process with status 3,
    which closes the TCP connection so the exchange cancels our persist:false orders."""

    def __init__(self, seconds: float, runner: Runner) -> None:
        self.seconds = seconds
        self.runner = runner
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cftrade-watchdog", daemon=True)

    def start(self) -> None:
        self.runner._heartbeat = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()

    def _watch(self) -> None:
        while not self._halt.wait(min(1.0, self.seconds / 4)):
            stalled = time.monotonic() - self.runner._heartbeat
            if stalled > self.seconds:
                msg = f"cftrade: event loop stalled for {stalled:.1f} s (watchdog {self.seconds:g} s): exiting"
                log.critical(msg)
                print(msg, file=sys.stderr, flush=True)
                os._exit(3)


class StatusBlock:
    """The live status: a block of lines kept at the bottom of a terminal's stderr.

    Redrawn in place (ANSI: move up over the previous block, clear to the end).  Anything
    else written to stderr must go *above* it, or the next redraw would move up over those
    lines and erase them: :class:`StatusAwareHandler` clears the block before each log
    record, and the next redraw starts below the record."""

    def __init__(self) -> None:
        self.lines = 0

    def clear(self) -> None:
        if self.lines:
            sys.stderr.write(f"\x1b[{self.lines}F\x1b[J")
            self.lines = 0

    def draw(self, lines: list[str]) -> None:
        self.clear()
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()
        self.lines = len(lines)


STATUS = StatusBlock()
"""The process's one status block (stderr is one terminal)."""


class StatusAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr log handler that writes its records above the live status, never over it."""

    def __init__(self, block: StatusBlock = STATUS) -> None:
        super().__init__(sys.stderr)
        self.block = block

    def emit(self, record: logging.LogRecord) -> None:
        self.block.clear()
        super().emit(record)


def _render_status(runner: Runner) -> None:
    core = runner.core
    if core is None:
        return
    lines = []
    elapsed = trio.current_time() - runner._t0
    dur = runner.options.duration or runner.config.run.duration
    if dur:
        frac = min(elapsed / dur, 1.0)
        bar = "#" * int(frac * 30)
        lines.append(f"[{bar:<30}] {elapsed:6.1f}/{dur:g} s")
    else:
        lines.append(f"running {elapsed:.1f} s")
    for m, b in core.books.items():
        lines.append(
            f"  {m.name}: bid {_px(b.best_bid, m)} ask {_px(b.best_ask, m)}  ({len(b)} orders)"
        )
    st = core.risk.statistics()
    for name, s in core.summary()["strategies"].items():
        market = core.slots[name].market
        lines.append(
            f"  {name:<14} {s['state']:<8} pos {s['position']:>12} {market.base.symbol}  "
            f"pnl {s['net_pnl']:>10} {market.counter.symbol}  "
            f"open {s['orders_open']:>3}  fills {s['trades']:>4}  denied {s['denials']}"
        )
        if s["state"] != "ACTIVE":  # why, on its own line (the summary has it too)
            lines.append(f"    {s['state'].lower()}: {(core.risk.reason(name) or '')[:100]}")
    lines.append(f"  rate headroom: {st.user_tokens_left}/{st.user_budget.count} order commands per "
                 f"{st.user_budget.per:g} s; sessions {runner.sessions}; kill: {st.kill_reason or 'off'}")
    STATUS.draw(lines)


def _px(value: int | None, market: Market) -> str:
    from engine.scale import format_price

    return "-" if value is None else format_price(value, market)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def new_seed() -> int:
    return secrets.randbits(32)
