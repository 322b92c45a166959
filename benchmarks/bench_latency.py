"""Benchmark: tick-to-order latency of the live runner over loopback WebSocket (real TCP).

``cftrade bench latency`` prints one JSON line.  What is timed, per tick::

    exchange core emits a notice ──► server writes it to the socket (engine.ws, in the core's call)
      ──► 127.0.0.1 TCP ──► client reader task: frame parse + decode ──► in the same task
      (Runner._inline): book.apply ──► strategy.on_book ──► risk gate ──► order tracker
      ──► encode + WebSocket frame + socket write ──► 127.0.0.1 TCP ──► server reader task:
      frame parse + decode of the PlaceOrder

The tick is another user's ask, injected into the exchange core through an internal session,
so the *exchange* emits the OrderOpened that moves the best ask.  t0 is when the exchange
emits that notice: just before the server's socket ``write`` of the frame that carries it
(the connection's ``write_nowait`` is wrapped), the start the issue names ("the exchange
emits a notice → the strategy decides → the exchange receives the PlaceOrder").  t1 is when
the server hands the runner's PlaceOrder to the core (``Exchange.handle`` is wrapped; nothing
in server.py is changed).  ``inject_to_order`` reports the stricter span the figures used
until session 5: from just before the ask is injected, so it adds the exchange core's
handling of that other user's order (validation, matching, booking, building and encoding
OrderOpened and TickerChanged) to every tick.  Both are ``time.perf_counter_ns`` in this one process: the exchange
server and the runner share one trio loop and one core, as with ``cftrade run`` and its
embedded exchange.  The runner is the production :class:`~engine.runner.Runner` with
``transport="tcp"``; only its rate limits are raised (LIMITS.md's 1 order/s would make 2,000
ticks take half an hour) and its risk state is kept in memory.

The strategy (:class:`Taker`) takes every ask below a threshold with a marketable limit bid
of the same size, so each tick is one notice in and one PlaceOrder out, and the book returns
to its resting state after the fill.  Ticks are paced (``--rate``), and a tick is only
injected once the previous one has been traded and settled, so no tick waits behind another.

With ``--split`` the exchange runs in a child process (``cftrade exchange``-style server, the
injector and both timestamps live there) and the runner in this one, so the two no longer
share a core: closer to a runner trading with a remote exchange, minus the network.

A second, shorter pass (``--breakdown``, in-process mode only) wraps a few runner and server
methods to timestamp each stage: ``core_to_write`` (the exchange core handles the injected
ask up to the server's socket write of the OrderOpened, system call included),
``write_to_reader`` (the rest of that command, the injector parking, a scheduler pass and
the I/O poll, the client's read and frame parse), ``decode`` (JSON decode + notice queue),
``queue_to_core`` (the inline consumer taking the event), ``book_apply`` (book update up to
the strategy hook), ``strategy_risk`` (on_book including the risk check, tracker and balance
bookkeeping), ``encode_send`` (the rest of the core's notice handling, tag, encode, mask,
socket write) and ``send_to_server`` (scheduler pass + I/O poll → server read, parse,
decode).  The wrappers cost a few µs, so the headline figures come from the plain pass.
Until 2026-11-24 the path had three more task switches (trio-websocket's reader task and
channel on each end, the runner's event task and its dispatcher task); see BENCHMARKS.md.
``core_to_write`` also held the kernel sending the client's owed TCP ACK for the previous
tick's fills (inside the exchange's write, on loopback) until the client began to push
that ACK when its reader idles (session 4, ``WebSocket._ack_now``).

Self-check: every tick produced exactly one PlaceOrder of the expected price and size, every
one filled completely, user 1's XBT balance grew by exactly ticks × size, no order of user 1
is left open, the runner recorded no error, and the exchange's invariants hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from engine.config import load_run_config
from engine.governor import Governor
from engine.limits import Limit
from engine.protocol.messages import GetOrders, PlaceOrder
from engine.risk import RiskGovernor
from engine.risk.model import UserRiskLimits
from engine.runner import DEMO_COOKIE, DEMO_PASSPHRASE, Runner, RunOptions
from engine.runtime import TradingCore
from engine.scale import GBP, XBT
from engine.strategy import Context, Strategy, StrategyConfig

ROOT = Path(__file__).resolve().parents[1]
USER = 1  # the runner (embedded exchange's demo user)
INJECTOR = 2  # places the asks the strategy reacts to
MAKER = 3  # a standing bid and ask, so the book is two-sided
SIZE = 100_000  # 0.001 XBT per tick
BASE_PRICE = 3_000_000  # 30000.00 GBP
THRESHOLD = 3_050_000  # the strategy takes asks below 30500.00
STANDING_ASK = 3_100_000
STANDING_BID = 2_900_000

EXCHANGE_YAML = """
api_version: 2
seed: 1
users:
  - user_id: 1
    demo: true
    balances: {XBT: "10", GBP: "100000000.00", EUR: "0"}
  - user_id: 2
    balances: {XBT: "100000", GBP: "100000000.00", EUR: "0"}
  - user_id: 3
    balances: {XBT: "100000", GBP: "100000000.00", EUR: "0"}
markets:
  - {base: "XBT", counter: "GBP"}
fees:
  - {min_volume: "0", maker_ppm: 100, taker_ppm: 300}
limits: {enabled: false}
participants: {enabled: false}
"""

RUN_YAML = """
exchange: {exchange}
markets: ["XBT:GBP"]
strategies:
  - name: taker
    class: "benchmarks.bench_latency:Taker"
    market: "XBT:GBP"
run: {{seed: 1, state_dir: "{state}"}}
logging: {{level: "warning"}}
"""


class Taker(Strategy):
    """Takes every ask below ``THRESHOLD`` with a marketable limit bid of its size (the limit
    is 0.1% above the ask, so the reservation also covers the taker fee and the bid fills
    completely at the ask's price)."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        pass

    def on_start(self, ctx: Context) -> None:
        self.pending = 0
        self.placed = 0
        self.settled = trio.Event()
        self.marks: list[tuple[int, int]] | None = None

    def on_book(self, ctx: Context) -> None:
        ask = ctx.book.best_ask
        if self.pending or ask is None or ask >= THRESHOLD:
            return
        t = time.perf_counter_ns() if self.marks is not None else 0
        self.pending = ctx.buy(ask + ask // 1000, SIZE)
        self.placed += 1
        if self.marks is not None:
            self.marks.append((t, time.perf_counter_ns()))

    def on_order(self, ctx: Context, order: Any) -> None:
        if order.ref == self.pending and not order.is_open:
            self.pending = 0
            self.settled.set()


class BenchRunner(Runner):
    """The production runner with rate limits raised for the benchmark (and no risk file)."""

    def _governor(self) -> Governor:
        big = Limit(10**9, 1.0, "user")
        return Governor({"orders": big, "info": big, "auth": big, "records": big}, safety_factor=1.0)

    def _build_core(self, state_dir: Path) -> TradingCore:
        core = super()._build_core(state_dir)
        risk = RiskGovernor(UserRiskLimits(orders=Limit(10**9, 1.0, "user")), state_path=None,
                            now=self._now, scales=self.config.scales)
        for name, slot in core.slots.items():
            risk.add_strategy(name, self.config.strategy_risk(name), market=slot.market)
        core.risk = risk
        return core


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(values_ns: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in values_ns]
    return {"p50_us": round(_pct(us, 0.50), 1), "p99_us": round(_pct(us, 0.99), 1),
            "mean_us": round(statistics.fmean(us), 1), "max_us": round(max(us), 1)}


class Injector:
    """The exchange side of the benchmark: standing orders, tick injection, and t0/t1."""

    def __init__(self, exchange: Any) -> None:
        self.exchange = exchange
        self.t1: int | None = None
        self.t_emit: int | None = None
        self.arrived = trio.Event()
        self.places: list[PlaceOrder] = []
        self.watching = trio.Event()
        original = exchange.handle

        def handle(session: Any, cmd: Any) -> Any:
            if session.user_id == USER:
                if type(cmd) is PlaceOrder:
                    self.t1 = time.perf_counter_ns()
                    self.places.append(cmd)
                    self.arrived.set()
                elif type(cmd) is GetOrders:  # the runner's reconciliation: it is subscribed
                    self.watching.set()
            return original(session, cmd)

        exchange.handle = handle  # the server looks it up per command
        self.session = exchange.open_internal_session(INJECTOR)
        maker = exchange.open_internal_session(MAKER)
        for q, p in ((SIZE * 100, STANDING_BID), (-SIZE * 100, STANDING_ASK)):
            exchange.handle(maker, PlaceOrder(base=XBT.code, counter=GBP.code, quantity=q, price=p))
        self.xbt_before = exchange.balances(USER)[XBT.code][0]

    def watch_emission(self, server: Any) -> None:
        """Stamp ``t_emit`` just before the server writes the runner's first frame of a tick.

        Wraps the ``write_nowait`` of the runner's connection on ``server`` (the one
        :class:`~engine.exchange.server.ExchangeServer` instance, not the class).  The frame
        written is the tick's OrderOpened and TickerChanged, corked into one ``write``."""
        ws: Any = next(c.ws for c in server._open if c.session is not None and c.session.user_id == USER)
        write = ws.write_nowait
        clock = time.perf_counter_ns

        def write_nowait(data: bytes) -> bool:
            if self.t_emit is None:
                self.t_emit = clock()
            return write(data)

        ws.write_nowait = write_nowait
        self.t_emit = 0  # armed by tick()

    async def tick(self, k: int, settled: Any = None) -> tuple[int, int]:
        """Inject tick ``k``; returns (t1 - t_emit, t1 - t0) in ns once the runner's PlaceOrder
        arrived (and, with ``settled``, once that awaitable factory says the runner is done
        with it).  Without :meth:`watch_emission` the first is 0."""
        self.arrived = trio.Event()
        price = BASE_PRICE - (k % 100)
        cmd = PlaceOrder(base=XBT.code, counter=GBP.code, quantity=-SIZE, price=price)
        watched = self.t_emit is not None
        with trio.fail_after(5):  # entered before t0: the harness's own cost stays outside
            if watched:
                self.t_emit = None  # armed: the next write to the runner is this tick's notice
            t0 = time.perf_counter_ns()
            self.exchange.handle(self.session, cmd)  # the core delivers OrderOpened to the runner now
            await self.arrived.wait()
            if settled is not None:
                await settled()
        assert self.t1 is not None
        self.t0 = t0
        if not watched:
            return 0, self.t1 - t0
        assert self.t_emit is not None and t0 <= self.t_emit <= self.t1, "the notice went out outside its tick"
        return self.t1 - self.t_emit, self.t1 - t0

    def check(self, ticks: int) -> list[str]:
        """Self-check after ``ticks`` ticks: one exact PlaceOrder each, all filled."""
        ex = self.exchange
        problems = []
        if len(self.places) != ticks:
            problems.append(f"{len(self.places)} PlaceOrders for {ticks} ticks")
        for k, cmd in enumerate(self.places):
            price = BASE_PRICE - (k % 100)
            if cmd.quantity != SIZE or cmd.price != price + price // 1000:
                problems.append(f"tick {k}: unexpected order {cmd}")
                break
        gain = ex.balances(USER)[XBT.code][0] - self.xbt_before
        if gain != ticks * SIZE:
            problems.append(f"XBT balance grew by {gain}, expected {ticks * SIZE}")
        if ex.open_orders(USER):
            problems.append(f"{len(ex.open_orders(USER))} orders of user 1 left open")
        ex.check_invariants()
        return problems


class Stages:
    """In-process breakdown: stage timestamps from wrappers on runner and server instances."""

    def __init__(self, runner: BenchRunner) -> None:
        core, client = runner.core, runner.client
        assert core is not None and client is not None
        conn: Any = client.connection
        self.stamps: dict[str, int] = {}
        stamps = self.stamps
        on_frame, on_notice = conn._on_frame, core.on_notice
        ws: Any = conn._ws
        receive, client_write = ws.receive, ws.write_nowait
        server_ws: Any = next(c.ws for c in runner.server._open if c.session.user_id == USER)
        server_write = server_ws.write_nowait

        def written(data: bytes) -> bool:
            done = server_write(data)
            if "t0" in stamps and "written" not in stamps:
                stamps["written"] = time.perf_counter_ns()
            return done

        async def receiving() -> Any:
            message = await receive()
            if "written" in stamps and "frame" not in stamps:
                stamps["frame"] = time.perf_counter_ns()
            return message

        def frame(message: Any) -> None:
            on_frame(message)
            if "frame" in stamps and "decoded" not in stamps:
                stamps["decoded"] = time.perf_counter_ns()

        def notice(n: Any) -> None:
            if "decoded" in stamps and "rx" not in stamps:
                stamps["rx"] = time.perf_counter_ns()
            on_notice(n)

        def sent(data: bytes) -> bool:
            done = client_write(data)
            if "rx" in stamps and "send1" not in stamps:
                stamps["send1"] = time.perf_counter_ns()
            return done

        server_ws.write_nowait = written
        ws.receive, ws.write_nowait = receiving, sent
        conn._on_frame = frame
        targets: list[Any] = [core]
        targets[0].on_notice = notice


BREAKDOWN = [
    ("core_to_write", "t0", "written"),
    ("write_to_reader", "written", "frame"),
    ("decode", "frame", "decoded"),
    ("queue_to_core", "decoded", "rx"),
    ("book_apply", "rx", "hook"),
    ("strategy_risk", "hook", "emitted"),
    ("encode_send", "emitted", "send1"),
    ("send_to_server", "send1", "t1"),
]


def _config(d: Path, exchange: str) -> Any:
    (d / "run.yaml").write_text(RUN_YAML.format(exchange=exchange, state=d / "state"))
    return load_run_config(str(d / "run.yaml"))


def _taker(runner: Runner) -> Taker:
    core = runner.core
    assert core is not None
    s = core.slots["taker"].strategy
    assert isinstance(s, Taker)
    return s


async def run_inprocess(ticks: int, breakdown_ticks: int, rate: float, warmup: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cftrade-bench-latency-") as tmp:
        d = Path(tmp)
        (d / "exchange.yaml").write_text(EXCHANGE_YAML)
        config = _config(d, '{config: "%s"}' % (d / "exchange.yaml"))
        runner = BenchRunner(config, RunOptions(status=False, handle_signals=False, transport="tcp",
                                                watchdog_seconds=0, audit_interval=3600.0))
        results: list[Any] = []

        async def go(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            results.append(await runner.run(task_status=task_status))

        async with trio.open_nursery() as nursery:
            await nursery.start(go)
            inj = Injector(runner.exchange)
            inj.watch_emission(runner.server)
            taker = _taker(runner)

            async def settled() -> None:
                while taker.pending:
                    await taker.settled.wait()
                    taker.settled = trio.Event()

            for k in range(warmup):
                await inj.tick(k, settled)
            gc.collect()
            plain: list[int] = []
            injected: list[int] = []
            start = trio.current_time()
            for k in range(ticks):
                await trio.sleep_until(start + k / rate)
                emitted, whole = await inj.tick(warmup + k, settled)
                plain.append(emitted)
                injected.append(whole)
            elapsed = trio.current_time() - start
            stages: dict[str, list[int]] = {name: [] for name, _, _ in BREAKDOWN}
            totals: list[int] = []
            totals_emit: list[int] = []
            if breakdown_ticks:
                taker.marks = []
                st = Stages(runner).stamps
                start2 = trio.current_time()
                for k in range(breakdown_ticks):
                    await trio.sleep_until(start2 + k / rate)
                    st.clear()
                    st["t0"] = time.perf_counter_ns()  # refined below to the injector's own t0
                    emitted, whole = await inj.tick(warmup + ticks + k, settled)
                    totals.append(whole)
                    totals_emit.append(emitted)
                    st["t0"], st["t1"] = inj.t0, inj.t1 or 0
                    st["hook"], st["emitted"] = taker.marks[-1]
                    if all(a in st and b in st for _, a, b in BREAKDOWN):
                        for name, a, b in BREAKDOWN:
                            stages[name].append(st[b] - st[a])
            runner.stop()
        total = warmup + ticks + breakdown_ticks
        problems = inj.check(total)
        if taker.placed != total:
            problems.append(f"the strategy placed {taker.placed} orders for {total} ticks")
        if results[0].summary["errors"]:
            problems.append(f"runner errors: {results[0].summary['errors']}")
        if problems:
            raise AssertionError("bench latency self-check failed: " + "; ".join(problems))
        out: dict[str, Any] = {
            "bench": "latency",
            "mode": "in-process (exchange server and runner share one trio loop)",
            "transport": "WebSocket over TCP 127.0.0.1",
            "ticks": ticks,
            "rate_per_s": rate,
            "achieved_per_s": round(ticks / elapsed, 1),
            "tick_to_order": _summary(plain),
            "inject_to_order": _summary(injected),
            "goal_p50_us": 150,
        }
        if totals:
            out["breakdown"] = {
                "ticks": len(totals),
                "tick_to_order_instrumented": _summary(totals_emit),
                "inject_to_order_instrumented": _summary(totals),
                "stages_p50_us": {name: round(_pct([v / 1000 for v in vals], 0.5), 1)
                                  for name, vals in stages.items() if vals},
                "stages_mean_us": {name: round(statistics.fmean(vals) / 1000, 1)
                                   for name, vals in stages.items() if vals},
            }
        out["checks"] = "ok"
        return out


# -- split mode: the exchange in a child process ------------------------------------------


async def serve_split(ticks: int, rate: float, warmup: int) -> int:
    """Child process: serve the exchange, wait for the runner, run the ticks, print results."""
    from engine.exchange.cli import load_config as load_exchange_config
    from engine.exchange.core import Exchange
    from engine.exchange.server import serve_exchange, wall_clock_us

    with tempfile.TemporaryDirectory(prefix="cftrade-bench-latency-x-") as tmp:
        (Path(tmp) / "exchange.yaml").write_text(EXCHANGE_YAML)
        settings = load_exchange_config(Path(tmp) / "exchange.yaml").exchange_settings(participants=False)
    import random

    exchange = Exchange(settings, clock_us=wall_clock_us, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_exchange, exchange, "127.0.0.1", 0)
        print(server.url, flush=True)
        inj = Injector(exchange)
        with trio.fail_after(60):  # the runner connects, subscribes and reconciles
            await inj.watching.wait()
        await trio.sleep(0.5)  # its start-up barrier and on_start
        inj.watch_emission(server)
        gap = 1.0 / rate
        for k in range(warmup):
            await inj.tick(k)
            await trio.sleep(gap)
        gc.collect()
        lat: list[int] = []
        injected: list[int] = []
        start = trio.current_time()
        for k in range(ticks):
            await trio.sleep_until(start + k / rate)
            emitted, whole = await inj.tick(warmup + k)
            lat.append(emitted)
            injected.append(whole)
        elapsed = trio.current_time() - start
        await trio.sleep(0.2)  # the last fill's notices reach the runner
        problems = inj.check(warmup + ticks)
        out = {"tick_to_order": _summary(lat), "inject_to_order": _summary(injected),
               "achieved_per_s": round(ticks / elapsed, 1), "problems": problems}
        print(json.dumps(out), flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    return 0


async def run_split(ticks: int, rate: float, warmup: int) -> dict[str, Any]:
    # The child collects before its timed ticks; so does this side, or a full collection of
    # what the in-process pass left (about 50 ms) lands among the split ticks.
    gc.collect()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks.bench_latency", "--serve-split", "--ticks", str(ticks),
         "--rate", str(rate), "--warmup", str(warmup)],
        stdout=subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stdout is not None
    lines = _lines(proc.stdout)
    try:
        with trio.fail_after(60):
            url = (await lines.__anext__()).strip()
        os.environ["CF_BENCH_COOKIE"] = DEMO_COOKIE
        os.environ["CF_BENCH_PASSPHRASE"] = DEMO_PASSPHRASE
        with tempfile.TemporaryDirectory(prefix="cftrade-bench-latency-") as tmp:
            exchange = ('{url: "%s", user_id: 1, cookie: {env: CF_BENCH_COOKIE}, '
                        'passphrase: {env: CF_BENCH_PASSPHRASE}}' % url)
            runner = BenchRunner(_config(Path(tmp), exchange),
                                 RunOptions(status=False, handle_signals=False, watchdog_seconds=0,
                                            audit_interval=3600.0))
            results: list[Any] = []

            async def go(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                results.append(await runner.run(task_status=task_status))

            async with trio.open_nursery() as nursery:
                await nursery.start(go)
                with trio.fail_after(600):
                    child = json.loads(await lines.__anext__())
                runner.stop()
        taker = _taker(runner)
        problems = list(child["problems"])
        if taker.placed != ticks + warmup:
            problems.append(f"the strategy placed {taker.placed} orders for {ticks + warmup} ticks")
        if results[0].summary["errors"]:
            problems.append(f"runner errors: {results[0].summary['errors']}")
        if problems:
            raise AssertionError("bench latency self-check failed: " + "; ".join(problems))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        with trio.move_on_after(10):
            await proc.wait()
    return {
        "bench": "latency",
        "mode": "split (exchange in a child process, runner here)",
        "transport": "WebSocket over TCP 127.0.0.1",
        "ticks": ticks,
        "rate_per_s": rate,
        "achieved_per_s": child["achieved_per_s"],
        "tick_to_order": child["tick_to_order"],
        "inject_to_order": child["inject_to_order"],
        "goal_p50_us": 150,
        "checks": "ok",
    }


async def _lines(stream: Any) -> Any:
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stream.receive_some()
            if not chunk:
                raise EOFError("the exchange child process ended")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        yield line.decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cftrade bench latency", description=__doc__.splitlines()[0])
    p.add_argument("--ticks", type=int, default=2000, help="timed ticks (default 2000)")
    p.add_argument("--breakdown", type=int, default=500,
                   help="extra instrumented ticks, in-process mode; 0 skips (default 500)")
    p.add_argument("--rate", type=float, default=500.0, help="ticks per second, at most (default 500)")
    p.add_argument("--warmup", type=int, default=200, help="untimed ticks first (default 200)")
    p.add_argument("--split", action="store_true", help="also measure with the exchange in a child process")
    p.add_argument("--serve-split", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.ticks < 1 or args.rate <= 0 or args.breakdown < 0 or args.warmup < 0:
        p.error("--ticks must be >= 1, --rate > 0, --breakdown and --warmup >= 0")
    if args.serve_split:
        return trio.run(serve_split, args.ticks, args.rate, args.warmup)
    out = trio.run(run_inprocess, args.ticks, args.breakdown, args.rate, args.warmup)
    if args.split:
        split = trio.run(run_split, args.ticks, args.rate, args.warmup)
        out["split"] = {k: split[k] for k in ("mode", "achieved_per_s", "tick_to_order", "inject_to_order")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
