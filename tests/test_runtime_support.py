"""Helpers shared by the strategy-runtime tests (no tests in this module).

* :func:`load_config` loads a run config (a file of ``configs/`` or YAML text) with its
  ``run.state_dir`` moved into the test's ``tmp_path``.
* :class:`ExchangeTap` watches the embedded exchange from the *exchange* side: every command
  user 1 sends (wrapping ``Exchange.handle``) and every own-order notice of user 1 (an
  internal listening session), so the ledger oracle never has to trust the client's own
  account of what happened.  Install it through ``RunOptions.drop_hook``.
* :class:`FaultyLink` turns one memory connection into one that can be cut: at once (both
  directions see EOF, buffered bytes are lost, further writes fail) or after a byte budget
  (the cut lands mid-frame).
* :func:`ledger` is RELIABILITY section 3.2's oracle: O1..O8 counters plus details.
* Test strategies referenced from configs as ``tests.test_runtime_support:Name``.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio
import trio.testing

from engine.config import RunConfig, load_run_config
from engine.protocol.messages import (
    UNSET,
    CancelAllOrders,
    CancelOrder,
    ErrorReply,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
)
from engine.runner import Runner, RunOptions
from engine.scale import GBP, XBT
from engine.state.orders import OrderState
from engine.strategy import Context, Denial, PlaceLimit, PlaceMarket, Side, Strategy, StrategyConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
USER = 1  # the embedded exchange's demo user, the one the runner trades as


def load_config(source: str | Path, state_dir: Path, **run: Any) -> RunConfig:
    """A run config from ``configs/NAME.yaml`` (a Path) or YAML text, state in ``state_dir``.

    ``run`` overrides other keys of the ``run:`` section (``seed=...``, ``duration=...``).
    """
    if isinstance(source, Path):
        cfg = load_run_config(str(source))
    else:
        path = state_dir.parent / f"{state_dir.name}.yaml"
        path.write_text(textwrap.dedent(source))
        cfg = load_run_config(str(path))
    section = msgspec.structs.replace(cfg.run, state_dir=str(state_dir), **run)
    return msgspec.structs.replace(cfg, run=section)


def options(**kw: Any) -> RunOptions:
    """RunOptions for a virtual-time test run (memory transport, no status, no signals)."""
    base: dict[str, Any] = {"status": False, "handle_signals": False, "transport": "memory", "watchdog_seconds": 0}
    base.update(kw)
    return RunOptions(**base)


# -- the exchange-side tap ------------------------------------------------------------------


@dataclass
class Sent:
    """One command of user 1 as the exchange executed it."""

    t: float
    session: int
    cmd: Any
    reply: Any


@dataclass
class ExchangeFill:
    quantity: int = 0
    total: int = 0
    fee: int = 0
    count: int = 0
    times: list[float] = field(default_factory=list)


class ExchangeTap:
    """Records what user 1 did on the embedded exchange, seen from the exchange.

    Pass ``tap.hook`` (or a hook that calls it) as ``RunOptions.drop_hook``; on the first
    connection it wraps ``runner.exchange.handle`` and opens an internal listening session
    for user 1, which receives every own-order notice whatever connection is up.
    """

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.installed = False
        self.commands: list[Sent] = []
        self.fills: dict[int, ExchangeFill] = {}  # tonce -> fills of that order
        self.closed: dict[int, int] = {}  # tonce -> quantity left at OrderClosed
        self.opened: dict[int, int] = {}  # tonce -> exchange id
        self.connections = 0

    def hook(self, client_end: Any, server_end: Any) -> None:
        self.connections += 1
        if self.installed:
            return
        self.installed = True
        exchange = self.runner.exchange
        original = exchange.handle

        def handle(session: Any, cmd: Any) -> Any:
            reply = original(session, cmd)
            if session.user_id == USER and not session.internal:
                self.commands.append(Sent(trio.current_time(), session.id, cmd, reply))
            return reply

        exchange.handle = handle  # the server looks it up per command
        exchange.open_internal_session(USER, self._notice)

    def _notice(self, n: Notice) -> None:
        t = type(n)
        if t is OrdersMatched:
            m: Any = n
            for tonce, fee in ((m.bid_tonce, m.bid_counter_fee), (m.ask_tonce, m.ask_counter_fee)):
                if tonce is not UNSET and tonce is not None:
                    f = self.fills.setdefault(tonce, ExchangeFill())
                    f.quantity += m.quantity
                    f.total += m.total
                    f.fee += fee
                    f.count += 1
                    f.times.append(trio.current_time())
        elif t is OrderOpened:
            o: Any = n
            if o.tonce is not None:
                self.opened[o.tonce] = o.id
        elif t is OrderClosed:
            c: Any = n
            if c.tonce is not None:
                self.closed[c.tonce] = abs(c.quantity)

    # -- read-outs ----------------------------------------------------------------------

    def places(self) -> list[Sent]:
        return [s for s in self.commands if type(s.cmd) is PlaceOrder]

    def placed_tonces(self) -> list[int]:
        """Tonces of PlaceOrders the exchange accepted, in execution order (with repeats)."""
        return [s.cmd.tonce for s in self.places() if isinstance(s.reply, PlaceOrderReply)]

    def error_codes(self) -> Counter[int]:
        return Counter(s.reply.error_code for s in self.commands if isinstance(s.reply, ErrorReply))

    def cancel_all_count(self) -> int:
        return sum(1 for s in self.commands if type(s.cmd) is CancelAllOrders)

    def cancels(self) -> list[Sent]:
        return [s for s in self.commands if type(s.cmd) is CancelOrder]


# -- fault injection ------------------------------------------------------------------------


class FaultyLink:
    """A memory connection that can be cut like a dropped TCP connection.

    ``cut()`` makes both ends read EOF after what they already received, throws away the
    bytes still in flight, and makes every later write fail with BrokenResourceError.  With
    ``budget`` the link cuts itself once that many bytes (both directions together) have
    passed, in the middle of whatever frame crosses the line.
    """

    def __init__(self, client_end: Any, server_end: Any, *, budget: int | None = None) -> None:
        self.pairs = [
            (client_end.send_stream, server_end.receive_stream),
            (server_end.send_stream, client_end.receive_stream),
        ]
        self.budget = budget
        self.is_cut = False
        self.opened_at = trio.current_time()
        self.cut_at: float | None = None
        self.bytes = 0
        for s, r in self.pairs:
            s.send_all_hook = partial(self._send, s, r)
            s.close_hook = partial(self._close, s, r)

    @staticmethod
    def _take(s: Any) -> bytes:
        try:
            return bytes(s.get_data_nowait())
        except (trio.WouldBlock, trio.ClosedResourceError):
            return b""

    async def _send(self, s: Any, r: Any) -> None:
        if self.is_cut:
            self._take(s)
            raise trio.BrokenResourceError("connection cut by the test")
        data = self._take(s)
        if not data:
            return
        if self.budget is not None and self.bytes + len(data) >= self.budget:
            keep = self.budget - self.bytes
            self._put(r, data[:keep])
            self.bytes += keep
            self.cut()
            raise trio.BrokenResourceError("connection cut by the test (byte budget)")
        self.bytes += len(data)
        self._put(r, data)

    def _close(self, s: Any, r: Any) -> None:
        self._take(s)
        try:
            r.put_eof()
        except trio.ClosedResourceError:
            pass

    @staticmethod
    def _put(r: Any, data: bytes) -> None:
        if data:
            try:
                r.put_data(data)
            except trio.ClosedResourceError:
                pass

    def cut(self) -> None:
        if self.is_cut:
            return
        self.is_cut = True
        self.cut_at = trio.current_time()
        for s, r in self.pairs:
            self._take(s)
            try:
                r.put_eof()
            except trio.ClosedResourceError:
                pass


# -- the ledger oracle ----------------------------------------------------------------------


@dataclass
class Ledger:
    """RELIABILITY 3.2 counters (0 = holds) with the offending items for the message."""

    o1: list[Any] = field(default_factory=list)
    o2: list[Any] = field(default_factory=list)
    o3: list[Any] = field(default_factory=list)
    o4: list[Any] = field(default_factory=list)
    o5: list[Any] = field(default_factory=list)
    o6: list[Any] = field(default_factory=list)
    o7: list[Any] = field(default_factory=list)
    o8: list[Any] = field(default_factory=list)
    lost: list[Any] = field(default_factory=list)
    """Orders whose fills the client never saw because the notices died with a connection
    (no trade ids, no replay: RELIABILITY 0.3); the client settled them from GetOrders."""
    intents: int = 0
    fills: int = 0

    def counts(self) -> dict[str, int]:
        return {f"O{i}": len(getattr(self, f"o{i}")) for i in range(1, 9)}

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.counts().items()) + f" (fills lost with notices: {len(self.lost)})"

    @property
    def clean(self) -> bool:
        """Every counter 0 and no fill lost (what a run without faults must show)."""
        return not any(self.counts().values()) and not self.lost


def ledger(runner: Runner, tap: ExchangeTap) -> Ledger:
    """Check O1..O8 between the runner's state and the exchange (call at quiescence)."""
    core, ex = runner.core, runner.exchange
    assert core is not None and ex is not None
    led = Ledger()
    orders = list(core.tracker)
    led.intents = len(orders)
    by_tonce = {o.tonce: o for o in orders if o.tonce is not None}

    # O1: each intent (one tonce) became at most one exchange order.
    accepted = Counter(tap.placed_tonces())
    led.o1 = [(t, n) for t, n in accepted.items() if n > 1]
    foreign = [t for t in accepted if t not in by_tonce]
    led.o1 += [("no intent for tonce", t) for t in foreign]

    # O2/O3: open orders agree exactly (nothing is in flight at a quiescent instant).
    theirs = {o.id: o for o in ex.open_orders(USER)}
    mine = {o.id: o for o in core.tracker.open_orders()}
    led.o2 = [theirs[i] for i in theirs if i not in mine]
    led.o3 = [mine[i] for i in mine if i not in theirs]

    # O4: fills per order, quantity, total and fee, from the exchange's own notices.  A
    # shortfall on an order the client itself settled from GetOrders (closed while its
    # notices were lost) is the protocol's limit, not a miscount: listed in ``lost``.
    for tonce, o in by_tonce.items():
        f = tap.fills.get(tonce, ExchangeFill())
        if (o.filled, o.filled_total, o.counter_fees) != (f.quantity, f.total, f.fee):
            settled_blind = o.is_terminal and not o.closed_confirmed
            if o.filled < f.quantity and o.filled_total <= f.total and settled_blind:
                led.lost.append((o, (f.quantity, f.total, f.fee)))
            else:
                led.o4.append((o, (f.quantity, f.total, f.fee)))
        led.fills += f.count
    led.o4 += [("fill of unknown tonce", t) for t in tap.fills if t not in by_tonce]

    # O5: the balance view equals the exchange's available balance, per asset.
    bal = ex.balances(USER)
    for asset in (XBT, GBP):
        mine_av, theirs_av = core.balances.available(asset.code), bal[asset.code][0]
        if mine_av != theirs_av:
            led.o5.append((asset.symbol, mine_av, theirs_av))

    # O6: reservations and global conservation (the exchange's own invariant check).
    try:
        ex.check_invariants()
    except AssertionError as e:
        led.o6.append(str(e))

    # O7: nothing left UNKNOWN (or PENDING at a quiescent instant).
    led.o7 = [o for o in orders if o.state in (OrderState.UNKNOWN, OrderState.PENDING)]

    # O8: tonces reach the exchange increasing, except the same intent sent again.
    high = 0
    seen: dict[int, Any] = {}
    for s in tap.places():
        t = s.cmd.tonce
        if t is UNSET:
            led.o8.append(("PlaceOrder without tonce", s.cmd))
            continue
        if t <= high and (t not in seen or _fields(seen[t]) != _fields(s.cmd)):
            led.o8.append(("tonce not above the high-water mark", t, high))
        seen.setdefault(t, s.cmd)
        high = max(high, t)
    return led


def _fields(cmd: Any) -> dict[str, Any]:
    """A command's fields without its tag (a resubmission gets a fresh tag)."""
    return {f: getattr(cmd, f) for f in cmd.__struct_fields__ if f != "tag"}


# -- test strategies --------------------------------------------------------------------------


class BadOutput(Strategy):
    """Emits one bad intent of each kind (B8), then nothing; remembers the denials."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        pass

    def on_start(self, ctx: Context) -> None:
        self.denials: list[Denial] = []
        self.refs: list[int] = []
        self.done = False

    def on_book(self, ctx: Context) -> None:
        bid, ask = ctx.book.best_bid, ctx.book.best_ask
        if self.done or bid is None or ask is None:
            return
        self.done = True
        mid = (bid + ask) // 2
        bad: list[Any] = [
            PlaceLimit(Side.BUY, mid, float("nan")),  # type: ignore[arg-type]  # that is the point
            PlaceLimit(Side.BUY, mid, -1_000_000),
            PlaceLimit(Side.SELL, mid, 10**15),
            PlaceLimit(Side.BUY, mid * 10, 1_000_000),
            PlaceLimit(Side.SELL, mid // 10, 1_000_000),
            PlaceLimit(Side.BUY, float(mid), 1_000_000),  # type: ignore[arg-type]
            PlaceMarket(Side.BUY, quantity=10**15),
            PlaceLimit(Side.BUY, mid, True),  # type: ignore[arg-type]
        ]
        self.intents = bad
        for intent in bad:
            self.refs.append(ctx.emit(intent))

    def on_risk_denied(self, ctx: Context, denial: Denial) -> None:
        self.denials.append(denial)


class Crasher(Strategy):
    """Quotes one bid far below the market, then raises ZeroDivisionError on book update N."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        crash_after: int = 20
        offset: str = "50.00"

    def on_start(self, ctx: Context) -> None:
        self.books = 0
        self.quoted = False

    def on_book(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, Crasher.Config)
        bid = ctx.book.best_bid
        if bid is None:
            return
        if not self.quoted:
            self.quoted = True
            ctx.buy(bid - ctx.price(p.offset), ctx.amount("0.01"))
        self.books += 1
        if self.books >= p.crash_after:
            _ = 1 // 0


class Churn(Strategy):
    """Rests one bid far below the market and buys at market every timer tick: a sure
    loser (half the spread plus the taker fee each time), to trip ``max_loss``.  It only
    buys, so its market orders can never meet its own resting bid (self_cross)."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        size: str = "0.01"
        timer_interval: float | None = 5.0

    def on_start(self, ctx: Context) -> None:
        self.rest = 0

    def on_book(self, ctx: Context) -> None:
        bid = ctx.book.best_bid
        if not self.rest and bid is not None:
            self.rest = ctx.buy(bid - ctx.price("80.00"), ctx.amount(self.p.size))  # type: ignore[attr-defined]

    def on_timer(self, ctx: Context) -> None:
        ctx.market_order(Side.BUY, quantity=ctx.amount(self.p.size))  # type: ignore[attr-defined]


def every(interval: float, fn: Callable[[], None]) -> Callable[..., Any]:
    """A task that calls ``fn`` every ``interval`` seconds (for monitors in tests)."""

    async def task() -> None:
        while True:
            fn()
            await trio.sleep(interval)

    return task


# -- running with a companion task ----------------------------------------------------------


async def run_with(runner: Runner, during: Callable[[Runner], Any] | None = None) -> Any:
    """Run ``runner`` to its end; once its strategies have started, run ``during(runner)``
    (an async function) beside it.  Returns the :class:`RunResult`.  If the run ends
    before ``during`` does, ``during`` is cancelled and the test fails (it waited for
    something that never happened)."""
    results: list[Any] = []
    scope = trio.CancelScope()
    finished = during is None

    async def go(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        results.append(await runner.run(task_status=task_status))
        scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(go)
        if during is not None:
            with scope:
                await during(runner)
                finished = True
    assert finished, f"the run ended before the test's companion task did: {results[0].summary}"
    return results[0]


class Halts(list[tuple[float, "str | None", str]]):
    """Recorded halts (time, strategy name or None for the global kill, reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.event = trio.Event()

    def add(self, item: tuple[float, str | None, str]) -> None:
        self.append(item)
        self.event.set()

    async def wait(self) -> tuple[float, str | None, str]:
        """The first halt, once there is one."""
        await self.event.wait()
        return self[0]


def record_halts(runner: Runner) -> Halts:
    """Wrap the runner's risk governor so every halt is recorded as (time, name, reason);
    ``name`` is None for the global kill."""
    core = runner.core
    assert core is not None
    risk: Any = core.risk
    halts = Halts()
    halt, halt_one = risk.halt, risk._halt_one

    def wrapped_halt(name: str | None, reason: str) -> None:
        if name is None and risk.statistics().kill_reason is None:
            halts.add((trio.current_time(), None, str(reason)))
        halt(name, reason)

    def wrapped_halt_one(s: Any, reason: str) -> bool:
        done = halt_one(s, reason)
        if done:
            halts.add((trio.current_time(), s.name, reason))
        return bool(done)

    risk.halt = wrapped_halt
    risk._halt_one = wrapped_halt_one
    return halts


def strategy_of(runner: Runner, tonce: int) -> str | None:
    core = runner.core
    assert core is not None
    o = core.tracker.by_tonce(tonce)
    return None if o is None else o.strategy


class ReturnsRef(Strategy):
    """Places one far bid and *returns* its ref from on_book (a common mistake)."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        pass

    def on_book(self, ctx: Context) -> Any:
        bid = ctx.book.best_bid
        if bid is None:
            return None
        return ctx.buy(bid // 2, ctx.amount("0.01"))
