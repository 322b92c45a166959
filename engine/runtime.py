"""The trading core: state, strategies and the risk gate wired together, with no I/O.

``TradingCore`` is what the live runner (:mod:`engine.runner`) and the backtester drive, so a
strategy sees exactly the same thing live and in a replay.  Everything here is plain ``def``:

* **In**: notices (``on_notice``), book snapshots (``on_snapshot``), replies to our commands
  (``on_place_reply`` / ``on_place_lost`` / ``on_cancel_reply`` ...), balances and open orders
  from reconciliation, timers.
* **Out**: the commands to send, collected in ``outbox`` as :class:`Outgoing` records; the
  driver sends them (pipelined, through the rate-limit governor) and reports the outcome.

Data flow for one notice::

    notice -> Book.apply (public view)            -> on_book / on_trade hooks
           -> OrderTracker.on_notice (own orders) -> BalanceView / PositionBook -> on_order / on_fill
           -> BalanceView.on_balance_changed

Every strategy hook runs inside an exception boundary: a strategy that raises is HALTED by the
risk governor and its orders are cancelled; the other strategies go on (RELIABILITY F14).
Intents emitted during a hook are judged by the risk governor at once; a denial is handed
back through ``on_risk_denied`` after the current hook returns (never re-entrantly).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from engine.errors import ExchangeError
from engine.protocol.messages import (
    UNSET,
    CancelOrderReply,
    ErrorReply,
    GetBalancesReply,
    GetOrdersReply,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    TickerChanged,
    WatchOrdersReply,
)
from engine.registry import HOOKS
from engine.risk import RiskGovernor, TradingState
from engine.risk.checks import safe_repr
from engine.risk.model import MarketView
from engine.scale import DEFAULT, Market, Scales, to_scaled
from engine.state import lostfills
from engine.state.balances import BalanceView
from engine.state.book import TOP_PRICE, TOP_QTY, Book
from engine.state.orders import Closed, Filled, Opened, Order, OrderEvent, OrderState, OrderTracker
from engine.state.positions import Position, PositionBook
from engine.state.tonces import TonceAllocator
from engine.strategy import (
    Cancel,
    CancelAll,
    Denial,
    Fill,
    Intent,
    PlaceLimit,
    PlaceMarket,
    Replace,
    Side,
    Strategy,
    Ticker,
    Trade,
)

log = logging.getLogger("engine.runtime")

_TOP = TOP_PRICE | TOP_QTY  # on_book runs only when the best bid/ask price or size changed
_INTENT_TYPES = (PlaceLimit, PlaceMarket, Cancel, CancelAll, Replace)


@dataclass(slots=True)
class Outgoing:
    """A command the driver must send: ``kind`` says which, ``order`` which order."""

    kind: Literal["place", "cancel"]
    order: Order
    strategy: str


@dataclass(slots=True)
class StrategyStats:
    hooks: int = 0
    """Hook calls that ran strategy code (a hook the strategy does not override is skipped)."""
    intents: int = 0
    denials: int = 0
    denials_by_rule: dict[str, int] = field(default_factory=dict)
    """Denials per risk rule; the first of each rule is logged (WARNING) with its reason."""
    errors: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Slot:
    strategy: Strategy
    market: Market
    ctx: StrategyContext
    positions: PositionBook
    position: Position
    """``positions.position(market)``, kept at hand (a Position lives as long as its book)."""
    stats: StrategyStats = field(default_factory=StrategyStats)
    started: bool = False
    book_interval_us: int = 0
    """``on_book`` conflation (StrategyConfig.book_interval), 0 = off."""
    next_book_us: int = 0
    """No ``on_book`` before this time (conflation)."""
    book_pending: bool = False
    """The touch changed while conflated: one ``on_book`` is owed at ``next_book_us``."""
    noop: frozenset[str] = frozenset()
    """Hooks the strategy leaves to the base class (they do nothing: not called)."""


class StrategyContext:
    """The :class:`engine.strategy.Context` a strategy sees (read-only state + emitters)."""

    def __init__(self, core: TradingCore, name: str, market: Market, params: Any) -> None:
        self._core = core
        self.name = name
        self.market = market
        self.params = params
        # The core never replaces a market's Book (a gap resets it in place), so it is kept
        # here: Market's dataclass hash costs three Python calls per dict lookup.
        self._book = core.books[market]

    @property
    def book(self) -> Book:
        return self._book

    @property
    def now_us(self) -> int:
        return self._core.clock_us()

    @property
    def state(self) -> TradingState:
        return self._core.risk.state(self.name)

    def open_orders(self) -> list[Order]:
        return self._core.tracker.open_orders(strategy=self.name, market=self.market)

    def order(self, ref: int) -> Order | None:
        """This strategy's order for intent ``ref`` (open or not), or None."""
        o = self._core.tracker.get(ref)
        return o if o is not None and o.strategy == self.name else None

    def position(self) -> int:
        return self._core.slots[self.name].positions.position(self.market).base

    def order_budget(self) -> int:
        """Order placements (cancels included; a replace costs 2) the rate budget allows now."""
        return self._core.risk.tokens_left(self.name)

    def pnl(self) -> Fraction:
        """Realized + unrealized − fees in counter units (exact), marked to the mid."""
        return self._core.equity(self.name)

    def available(self, asset_symbol: str) -> int:
        from engine.scale import asset_by_symbol

        return self._core.balances.available(asset_by_symbol(asset_symbol).code)

    def amount(self, text: str) -> int:
        return self._core.scales.parse_amount(text, self.market.base)

    def price(self, text: str) -> int:
        return to_scaled(text, self.market.price_scale, f"{self.market.name} price")

    def buy(self, price: int, quantity: int, *, persist: bool = False) -> int:
        return self._core.submit(self.name, PlaceLimit(Side.BUY, price, quantity, persist))

    def sell(self, price: int, quantity: int, *, persist: bool = False) -> int:
        return self._core.submit(self.name, PlaceLimit(Side.SELL, price, quantity, persist))

    def market_order(self, side: Side, *, quantity: int | None = None, total: int | None = None) -> int:
        return self.emit(PlaceMarket(side, quantity, total))

    def cancel(self, ref: int) -> None:
        self.emit(Cancel(ref))

    def cancel_all(self) -> None:
        self.emit(CancelAll())

    def replace(self, ref: int, price: int, quantity: int) -> int:
        return self.emit(Replace(ref, price, quantity))

    def emit(self, intent: Intent) -> int:
        """Judge and act on one intent now; returns the order reference (0 if none)."""
        return self._core.submit(self.name, intent)


class TradingCore:
    """State + strategies + risk for one user's session (see the module docstring)."""

    def __init__(
        self,
        *,
        markets: Iterable[Market],
        risk: RiskGovernor,
        tonces: TonceAllocator,
        clock: Callable[[], float],
        clock_us: Callable[[], int],
        scales: Scales = DEFAULT,
        persist: bool = False,
    ) -> None:
        self.scales = scales
        self.clock = clock
        self.clock_us = clock_us
        self.risk = risk
        self.tonces = tonces
        self.persist = persist
        self.books: dict[Market, Book] = {m: Book(m, scales=scales) for m in markets}
        self.tracker = OrderTracker(clock=clock)
        self.balances = BalanceView(scales, clock=clock)
        self.account = PositionBook(scales)
        self.slots: dict[str, _Slot] = {}
        self.outbox: deque[Outgoing] = deque()
        self.last_price: dict[Market, int] = {}
        self.tickers: dict[Market, Ticker] = {}
        self.ready = False
        self._next_ref = 1
        self._deferred: deque[tuple[str, Denial]] = deque()
        self._in_hook = False
        self.fills: list[tuple[str, Fill]] = []
        self.denials: list[tuple[str, Denial]] = []
        self.volume_seen: dict[int, int] | None = None
        """Per asset: the exchange's trade volume (GetTradeVolume) at the last reconciliation
        plus every own fill seen since; what the exchange reports beyond it was traded in
        fills whose notices were lost (:meth:`infer_lost_fills`)."""
        self.inferred: list[Filled] = []
        self.on_book_deferred: Callable[[], None] | None = None
        """Called when an ``on_book`` is first owed (conflation): the runner wakes its timer."""
        self.inference_skipped = 0
        """Reconciliations whose volume gap was left unexplained (logged with the reason)."""
        self.open_gap: lostfills.Gap | None = None
        """A gap only one in-doubt PlaceOrder leaves ambiguous (:meth:`probe_order`)."""
        self._by_codes: dict[tuple[int, int], tuple[Market, Book]] = {}
        """(base, counter) codes -> (market, book), filled by :meth:`_market_book`."""

    # -- set-up ----------------------------------------------------------------------------

    def add_strategy(self, name: str, strategy: Strategy, market: Market, limits: Any) -> None:
        if name in self.slots:
            raise ValueError(f"duplicate strategy name {name!r}")
        if market not in self.books:
            self.books[market] = Book(market, scales=self.scales)
        ctx = StrategyContext(self, name, market, strategy.p)
        interval = getattr(strategy.p, "book_interval", None) or 0
        positions = PositionBook(self.scales, strategy=name)
        self.slots[name] = _Slot(strategy, market, ctx, positions, positions.position(market),
                                 book_interval_us=int(round(float(interval) * 1_000_000)),
                                 noop=_inherited_hooks(strategy))
        self.risk.add_strategy(name, limits, market=market)

    def start(self) -> None:
        """The start-up barrier has passed: call every strategy's ``on_start``, then ``on_book``."""
        self.ready = True
        for name, slot in self.slots.items():
            if self.risk.state(name) is TradingState.HALTED:
                log.warning("strategy %s starts HALTED (persisted): not started; after fixing the cause, "
                            "`cftrade kill CONFIG --resume %s` lifts the halt", name, name)
                self._cancel_strategy(name)
                continue
            self._call(name, "on_start")
            slot.started = True
        for name, slot in self.slots.items():
            if slot.started and self.books[slot.market].ready:
                self._on_book(name, slot)

    def stop(self) -> None:
        """Shutdown: ``on_stop`` hooks, then cancel every open order of every strategy."""
        for name, slot in self.slots.items():
            if slot.started:
                self._call(name, "on_stop")
        self.ready = False
        for name in self.slots:
            self._cancel_strategy(name)

    # -- inputs: market data ---------------------------------------------------------------

    def on_snapshot(self, market: Market, reply: WatchOrdersReply) -> None:
        book = self.books[market]
        if book.ready:
            book.reset()
        book.load_snapshot(reply)
        if self.ready:
            self._book_changed(market)

    def book_gap(self, market: Market) -> None:
        """Notices of ``market`` were lost: forget the view until the next snapshot."""
        self.books[market].reset()

    def on_notice(self, notice: Notice) -> None:
        t = type(notice)
        if t is OrderOpened or t is OrderClosed or t is OrdersMatched:
            n: Any = notice
            market, book = self._market_book(n.base, n.counter)
            changed = 0
            if book is not None:
                changed = book.apply(notice)
            own = (n.tonce is not UNSET) if t is not OrdersMatched else (n.bid_tonce is not UNSET or n.ask_tonce is not UNSET)
            if own:
                self._order_events(self.tracker.on_notice(notice))
            if t is OrdersMatched and market is not None:
                self.last_price[market] = n.price
                self._trade(market, n, own)
            if changed & _TOP and market is not None and self.ready:
                self._book_changed(market)
        elif t.__name__ == "BalanceChanged":
            self.balances.on_balance_changed(notice)  # type: ignore[arg-type]
        elif t is TickerChanged:
            self._ticker(notice)  # type: ignore[arg-type]
        if self._deferred:  # _flush_denials has nothing to do otherwise (and this is every notice)
            self._flush_denials()

    def _market_of(self, base: int, counter: int) -> Market | None:
        return self._market_book(base, counter)[0]

    def _market_book(self, base: int, counter: int) -> tuple[Market, Book] | tuple[None, None]:
        """The market and book of these asset codes (None, None if not followed here)."""
        hit = self._by_codes.get((base, counter))
        if hit is not None:
            return hit
        for m, book in self.books.items():
            if m.base.code == base and m.counter.code == counter:
                self._by_codes[(base, counter)] = (m, book)
                return m, book
        return None, None

    def _book_changed(self, market: Market) -> None:
        for name, slot in self.slots.items():
            if slot.market is market and slot.started:
                if slot.book_interval_us and self.clock_us() < slot.next_book_us:
                    if not slot.book_pending:
                        slot.book_pending = True
                        if self.on_book_deferred is not None:
                            self.on_book_deferred()
                    continue
                # _on_book, inline (every top-of-book change of a started strategy).
                if slot.book_interval_us:
                    slot.next_book_us = self.clock_us() + slot.book_interval_us
                    slot.book_pending = False
                self._call(name, "on_book")

    def _on_book(self, name: str, slot: _Slot) -> None:
        if slot.book_interval_us:
            slot.next_book_us = self.clock_us() + slot.book_interval_us
            slot.book_pending = False
        self._call(name, "on_book")

    def book_due_us(self) -> int | None:
        """When the earliest owed (conflated) ``on_book`` is due, or None: the driver (runner
        or replay) calls :meth:`fire_due_books` then."""
        due = [s.next_book_us for s in self.slots.values() if s.book_pending]
        return min(due) if due else None

    def fire_due_books(self) -> None:
        """Run every owed ``on_book`` whose interval has ended (conflation, see StrategyConfig)."""
        now = self.clock_us()
        for name, slot in self.slots.items():
            if slot.book_pending and slot.next_book_us <= now:
                slot.book_pending = False
                if slot.started and self.ready and self.books[slot.market].ready:
                    self._on_book(name, slot)
        self._flush_denials()

    def _trade(self, market: Market, n: OrdersMatched, own: bool) -> None:
        aggressor: Side | None = None
        if n.bid is UNSET:
            aggressor = Side.BUY
        elif n.ask is UNSET:
            aggressor = Side.SELL
        trade: Trade | None = None
        for name, slot in self.slots.items():
            if slot.market is market and slot.started and "on_trade" not in slot.noop:
                if trade is None:
                    trade = Trade(market.name, n.price, n.quantity, n.time, own, aggressor)
                self._call(name, "on_trade", trade)

    def _ticker(self, n: TickerChanged) -> None:
        market = self._market_of(n.base, n.counter)
        if market is None:
            return
        old = self.tickers.get(market) or Ticker(market.name, None, None, None, None, None, 0)

        def pick(new: Any, prev: Any) -> Any:
            return prev if new is UNSET else new

        tk = Ticker(
            market.name,
            pick(n.last, old.last),
            pick(n.bid, old.bid),
            pick(n.ask, old.ask),
            pick(n.low, old.low),
            pick(n.high, old.high),
            pick(n.volume, old.volume),
        )
        self.tickers[market] = tk
        if tk.last is not None:
            self.last_price[market] = tk.last
        for name, slot in self.slots.items():
            if slot.market is market and slot.started:
                self._call(name, "on_ticker", tk)

    # -- inputs: our own orders ------------------------------------------------------------

    def _order_events(self, events: list[OrderEvent]) -> None:
        for ev in events:
            if type(ev) is Filled and self.volume_seen is not None:
                vs = self.volume_seen
                vs[ev.market.base.code] = vs.get(ev.market.base.code, 0) + ev.fill.quantity
                vs[ev.market.counter.code] = vs.get(ev.market.counter.code, 0) + ev.fill.total
            self.balances.apply(ev)
            self.account.apply(ev)
            order = ev.order
            slot = self.slots.get(order.strategy) if order is not None else None
            if slot is not None:
                slot.positions.apply(ev)
            if type(ev) is Filled and order is not None:
                f = ev.fill
                fill = Fill(order.ref, order.side, f.price, f.quantity, f.total, f.counter_fee, f.time)
                self.fills.append((order.strategy, fill))
                if slot is not None and slot.started:
                    self._call(order.strategy, "on_fill", fill)
                    self._mark(order.strategy)
            if order is not None and slot is not None and slot.started and type(ev) in (Opened, Closed):
                self._notify(order)
            if type(ev) is Closed and order is not None:
                self.risk_after_close(order)

    def risk_after_close(self, order: Order) -> None:
        pass

    def on_place_reply(self, order: Order, reply: PlaceOrderReply | ErrorReply) -> None:
        events = self.tracker.on_place_reply(order, reply)
        if isinstance(reply, ErrorReply):
            self.balances.on_place_failed(order)
            log.info("order %s rejected: %s %s", order.ref, reply.error_code, reply.error_msg)
        elif order.tonce is not None:
            self.tonces.confirm(order.tonce, order.epoch)
        self._order_events(events)
        self._notify(order)
        self._flush_denials()

    def on_place_lost(self, order: Order, reason: str) -> None:
        self.tracker.on_place_lost(order, reason)
        self._notify(order)

    def on_cancel_reply(self, order: Order, reply: CancelOrderReply | ErrorReply) -> None:
        self.tracker.on_cancel_reply(order, reply)
        self._notify(order)
        self._flush_denials()

    def on_cancel_lost(self, order: Order) -> None:
        self.tracker.on_cancel_lost(order)

    def _notify(self, order: Order) -> None:
        """``on_order`` once per change of the order's state.  A notice and the reply to our
        own command often report one change between them (OrderOpened, then PlaceOrder's
        reply; OrderClosed, then CancelOrder's reply), in either order: the second says
        nothing new and is not passed on."""
        if order._told is order.state:
            return
        slot = self.slots.get(order.strategy)
        if slot is not None and slot.started:
            order._told = order.state
            self._call(order.strategy, "on_order", order)

    # -- inputs: reconciliation ------------------------------------------------------------

    def on_balances(self, reply: GetBalancesReply) -> None:
        self.balances.on_balances(reply)

    def on_open_orders(self, reply: GetOrdersReply, requested_at: float | None = None) -> Any:
        """Apply a GetOrders audit; orders of no known strategy are cancelled (no orphans)."""
        intents = {o.tonce: (o.ref, o.strategy) for o in self.tracker if o.tonce is not None}
        report = self.tracker.apply_open_orders(reply, intents=intents, requested_at=requested_at)
        for order in report.adopted:
            if order.strategy not in self.slots:
                log.warning("adopted foreign open order %s: cancelling (no strategy owns it)", order)
                self._queue_cancel(order, order.strategy or "")
        return report

    def infer_lost_fills(
        self,
        report: Any,
        balances: GetBalancesReply,
        orders: GetOrdersReply,
        volumes: dict[int, int],
    ) -> list[Filled]:
        """After a reconnect, record fills whose OrdersMatched died with the old connection.

        Call it after :meth:`on_open_orders` (its ``report``) and *before* :meth:`on_balances`
        (the balance view must still hold what we saw before the gap).  ``volumes`` is
        {asset code: GetTradeVolume} for the base and every counter asset; the first call
        only sets the baseline.

        The evidence (volume beyond what we saw, balance residuals, GetOrders remainders)
        is solved by :func:`engine.state.lostfills.solve`: base quantities exact per order
        (each side's lost quantity is exact; it goes to that side's orders in the exchange's
        matching priority), totals and fees exact per market, their split between the
        orders of one gap deterministic and within one unit per trade of the truth (the
        exchange rounds each trade stochastically; only sums survive).  One aggregate fill
        per order is recorded (``Fill.inferred``); realized PnL summed over strategies
        then matches the balances exactly.  When the evidence does not determine the fills
        (an order PENDING/UNKNOWN or open here but absent there, residuals that do not add
        up, one side trading in two markets, two hypotheses that both fit) nothing is
        recorded and the reason is logged; balances are exact either way (GetBalances).
        Returns the Filled events (already applied).
        """
        self.open_gap = None
        seen, self.volume_seen = self.volume_seen, dict(volumes)
        if seen is None:
            return []
        lost = {a: v - seen.get(a, 0) for a, v in volumes.items()}
        if not any(lost.values()):
            return []
        if any(v < 0 for v in lost.values()):
            log.warning("lost fills not inferred: volume gap %s is negative", lost)
            self.inference_skipped += 1
            return []
        markets = [m for m in self.books if lost.get(m.counter.code, 0)]
        bases = {m.base.code for m in markets}
        if len(bases) != 1:
            log.warning("lost fills not inferred: volume gap %s names %d base assets", lost, len(bases))
            self.inference_skipped += 1
            return []
        base_c = bases.pop()
        q = lost.get(base_c, 0)
        present = {o.id for o in orders.orders}
        pending = OrderState.PENDING
        absent = [o for o in self.tracker.open_orders() if o.id is None or o.id not in present]
        # PENDING at reconcile time: not sent yet (the dispatcher waits until this session is
        # reconciled; a send on the dead link is UNKNOWN by now), so the exchange holds no
        # reservation for it while our view anticipates one.  Anything else open here but
        # absent there (touched after the GetOrders was sent, UNKNOWN) is in real doubt.
        unsent = [o for o in absent if o.state is pending
                  or (o.state is OrderState.PENDING_CANCEL and o._cancel_from is pending)]
        doubt = [o for o in absent if o not in unsent]
        if doubt:
            log.warning("lost fills (gap %s) not inferred: orders in doubt %s", lost, doubt)
            self.inference_skipped += 1
            return []
        closed = list(dict.fromkeys([*report.vanished, *report.settled_unknown]))
        reserve = self.scales.bid_reservation
        # Residual per asset (GetBalances − our view) less what each candidate explains if it
        # did NOT trade: a closed order's reservation came back unseen; a never-sent order's
        # anticipated reservation was never taken (unless a surprise already absorbed it).
        assets = {base_c, *(m.counter.code for m in markets)}
        have = {b.asset: b.balance for b in balances.balances}
        resid = {a: have.get(a, 0) - self.balances.available(a) for a in assets}
        # An in-doubt PlaceOrder with no trace (no id, no fill) may never have been placed.
        # The residuals below assume it was (its reservation came back unseen); if it was
        # not and our view never counted its reservation (a surprise absorbed it), the
        # residual reads higher by that reservation.
        in_doubt = {o.ref for o in report.settled_unknown if o.id is None and not o.filled}
        cands: list[lostfills.Candidate] = []
        for o in closed:
            maybe = o.ref in in_doubt
            shift = 0
            if maybe and o.price is not None and o.remaining and not self.balances.reservation_anticipated(o.ref):
                shift = reserve(o.remaining, o.price, o.market) if o.side is Side.BUY else o.remaining
            cands.append(lostfills.Candidate(o, o.remaining, None, maybe, shift))
        cands += [lostfills.Candidate(o, r0, rx) for o, r0, rx in report.drift]
        untraded = [(o, o.remaining) for o in closed]
        untraded += [(o, o.remaining) for o in unsent if self.balances.reservation_anticipated(o.ref)]
        for o, rem in untraded:
            if o.price is None or not rem:
                continue
            if o.side is Side.BUY:
                a = o.market.counter.code
                resid[a] = resid.get(a, 0) - reserve(rem, o.price, o.market)
            else:
                resid[o.market.base.code] = resid.get(o.market.base.code, 0) - rem
        for o, r0, rx in report.drift:
            if o.side is Side.BUY and o.price is not None:
                a = o.market.counter.code
                resid[a] = resid.get(a, 0) - (reserve(r0, o.price, o.market) - reserve(rx, o.price, o.market))
        gap = lostfills.Gap(
            tuple(c for c in cands if c.order.market.base.code == base_c), q,
            {m: lost[m.counter.code] for m in markets}, resid.get(base_c, 0),
            {m: resid.get(m.counter.code, 0) for m in markets}, self.scales, self._fee_ppm_estimate(),
        )
        try:
            solution = gap.solve()
        except lostfills.Unsolved as e:
            log.warning("lost fills (gap %s) not inferred: %s (residuals %s; candidates %s)", lost, e, resid, cands)
            self.inference_skipped += 1
            if isinstance(e, lostfills.Ambiguous) and len(gap.in_doubt()) == 1:
                self.open_gap = gap  # the runner may settle it: probe_order / settle_probe
            return []
        events = self._record_inferred(solution)
        self.volume_seen = dict(volumes)  # the events were counted above: the gap is closed
        return events

    def probe_order(self) -> Order | None:
        """The in-doubt PlaceOrder whose fate alone left the last gap unexplained, if it
        may be resubmitted with its tonce to learn it (WEBSOCKET-README: the tonce lets a
        PlaceOrder be resubmitted after a connection failure without risk of a duplicate).

        Only when the answer is conclusive: same CancelAllOrders epoch, its tonce above every
        confirmed one, and no later PlaceOrder sent (error 3 then means "this one was
        placed", and success "it was not": it is placed now, as its strategy asked)."""
        gap = self.open_gap
        if gap is None:
            return None
        (order,) = gap.in_doubt()
        t = order.tonce
        if (t is None or order.state is not OrderState.REJECTED or order.closed_confirmed
                or not self.tonces.may_resubmit(t, order.epoch)):
            return None
        later = [o for o in self.tracker if o.tonce is not None and o.tonce > t and o.state is not OrderState.PENDING]
        return None if later else order

    def resubmit_probe(self, order: Order) -> PlaceOrder:
        """Mark ``order`` (from :meth:`probe_order`) as sent again; returns its command."""
        self.tracker.resubmit(order)
        self.balances.on_place_sent(order)
        return order.to_command()

    def settle_probe(self, order: Order, placed: bool | None) -> list[Filled]:
        """The probe's outcome: ``placed`` True (error 3: it was placed before, and it is
        gone from GetOrders), False (success: it was not, and is placed now), None (no
        answer).  Solves the open gap again with that fact and records its fills."""
        gap, self.open_gap = self.open_gap, None
        if gap is None or placed is None:
            return []
        if placed and order.state is OrderState.UNKNOWN:
            # Placed, and absent from GetOrders: closed while its notices were lost, like a
            # vanished order (the inferred fill below may take some or all of it).
            self.tracker.settle_vanished(order, "placed (error 3 on resubmission), absent from GetOrders")
        try:
            solution = gap.settle(order, placed)
        except lostfills.Unsolved as e:
            log.warning("lost fills not inferred after probing order %s (placed: %s): %s", order.ref, placed, e)
            return []
        seen = dict(self.volume_seen or {})
        events = self._record_inferred(solution)
        self.volume_seen = seen  # the gap's volume was taken as seen when it was left open
        self.inference_skipped -= 1
        log.warning("gap settled by resubmitting order %s (it was %splaced)", order.ref, "" if placed else "not ")
        return events

    def _record_inferred(self, solution: list[lostfills.Solution]) -> list[Filled]:
        events: list[Filled] = []
        now = self.clock_us()
        for s in solution:
            ev = self.tracker.record_inferred_fill(s.order, quantity=s.quantity, total=s.total, counter_fee=s.fee,
                                                   remaining=s.remaining, time=now)
            log.warning("inferred a fill lost with its notices: %r traded %s for %s (fee %s)",
                        s.order, s.quantity, s.total, s.fee)
            self._order_events([ev])
            events.append(ev)
        self.inferred.extend(events)
        self._flush_denials()
        return events

    def _fee_ppm_estimate(self) -> int:
        """Our fee rate on limit orders in ppm, from the fills we saw (0 before any): it
        sets how much a bid's reservation can still buy (:func:`lostfills.fee_rate`)."""
        return lostfills.fee_rate([(f.total, f.counter_fee) for o in self.tracker if o.price is not None
                                   for f in o.fills[-4:] if not f.inferred])

    def on_timer(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is not None and slot.started:
            self._call(name, "on_timer")
            self._mark(name)
            self._flush_denials()

    # -- intents -> commands ---------------------------------------------------------------

    def submit(self, name: str, intent: Intent) -> int:
        slot = self.slots[name]
        slot.stats.intents += 1
        market = slot.market
        kind: type = type(intent)
        if kind not in _INTENT_TYPES:  # a subclass (or not an intent: the risk gate denies it)
            kind = next((k for k in _INTENT_TYPES if isinstance(intent, k)), kind)
        replace_side: Side | None = None
        if kind is Replace:
            old = self.tracker.get(intent.ref)  # type: ignore[union-attr]
            replace_side = old.side if old is not None else None
        denial = self.risk.check(name, intent, self._view(name, market), market, replace_side=replace_side)
        if denial is not None:
            stats = slot.stats
            stats.denials += 1
            by_rule = stats.denials_by_rule
            seen = by_rule.get(denial.rule, 0)
            by_rule[denial.rule] = seen + 1
            if not seen:  # once per rule: a strategy without on_risk_denied still learns why
                log.warning("strategy %s: an intent was denied (%s): %s; the summary counts every denial "
                            "by rule (denials_by_rule), on_risk_denied hears each", name, denial.rule, denial.reason)
            self.denials.append((name, denial))
            self._deferred.append((name, denial))
            if not self._in_hook:
                self._flush_denials()
            return 0
        # ``kind`` is the intent's class among _INTENT_TYPES (a subclass maps to its base),
        # so identity tests suffice (cheaper than an isinstance chain on every order).
        if kind is PlaceLimit:
            i: Any = intent
            return self._place(name, market, i.side, quantity=i.quantity, price=i.price, persist=i.persist)
        if kind is PlaceMarket:
            i = intent
            return self._place(name, market, i.side, quantity=i.quantity, total=i.total)
        if kind is Cancel:
            order = self.tracker.get(intent.ref)  # type: ignore[union-attr]
            if order is not None and order.strategy == name and order.is_open:
                self._queue_cancel(order, name)
            return intent.ref  # type: ignore[union-attr]
        if kind is CancelAll:
            self._cancel_strategy(name)
            return 0
        if kind is Replace:
            i = intent
            old = self.tracker.get(i.ref)
            if old is None or old.strategy != name:
                return 0
            if old.is_open:
                self._queue_cancel(old, name)
            return self._place(name, market, old.side, quantity=i.quantity, price=i.price, persist=old.persist)
        return 0

    def _place(self, name: str, market: Market, side: Side, *, quantity: int | None = None,
               price: int | None = None, total: int | None = None, persist: bool | None = None) -> int:
        ref = self._next_ref
        self._next_ref += 1
        tonce = self.tonces.next()
        # One reading of the clock the tracker and the balance view share (both are built
        # with ``self.clock``) for the order and its reservation, made at the same moment.
        now = self.clock()
        order = self.tracker.place(
            ref, market, side, quantity=quantity, price=price, total=total, tonce=tonce,
            epoch=self.tonces.epoch, strategy=name, persist=self.persist if persist is None else persist,
            now=now,
        )
        self.balances.on_place_sent(order, now)
        self.outbox.append(Outgoing("place", order, name))
        return ref

    def _queue_cancel(self, order: Order, name: str) -> None:
        if order.state in (OrderState.PENDING_CANCEL,) or order.is_terminal:
            return
        if order.is_market:
            return
        if order.id is None and order.tonce is None:
            return
        try:
            self.tracker.on_cancel_sent(order)
        except ExchangeError:
            return
        except Exception as e:  # an illegal move (e.g. UNKNOWN) is settled by reconciliation
            log.debug("cancel of %s deferred: %s", order, e)
            return
        self.outbox.append(Outgoing("cancel", order, name))

    def _cancel_strategy(self, name: str) -> None:
        for order in self.tracker.open_orders(strategy=name):
            self._queue_cancel(order, name)
        if self.risk.needs_cancel(name):
            self.risk.cancel_done(name)

    def _view(self, name: str, market: Market) -> MarketView:
        slot = self.slots[name]
        book = slot.ctx._book if slot.market is market else self.books[market]
        # An order whose cancel is in flight is counted as gone: requoting (cancel + place)
        # would otherwise see twice its real exposure for a round trip.  The race (the old
        # order fills before the cancel lands) is bounded by one order per requote.
        # One pass over the open orders (this runs before every order: tick-to-order).
        live = OrderState.PENDING_CANCEL
        buy = Side.BUY
        mine = buy_q = sell_q = 0
        own_bid: int | None = None
        own_ask: int | None = None
        open_orders = self.tracker.open_values()
        for o in open_orders:
            if o.market is not market or o.state is live:
                continue
            price = o.price
            if o.side is buy:
                if price is not None:
                    if own_bid is None or price > own_bid:
                        own_bid = price
                    if o.strategy == name:
                        buy_q += o.remaining
            elif price is not None:
                if own_ask is None or price < own_ask:
                    own_ask = price
                if o.strategy == name:
                    sell_q += o.remaining
            if o.strategy == name:
                mine += 1
        return MarketView(
            best_bid=book.best_bid,
            best_ask=book.best_ask,
            last=self.last_price.get(market),
            position=(slot.position if slot.market is market else slot.positions.position(market)).base,
            open_orders=mine,
            user_open_orders=len(open_orders),  # exchange-side count: all open
            open_buy_quantity=buy_q,
            open_sell_quantity=sell_q,
            own_best_bid=own_bid,
            own_best_ask=own_ask,
        )

    # -- hooks and supervision -------------------------------------------------------------

    def _call(self, name: str, hook: str, *args: Any) -> None:
        slot = self.slots[name]
        if hook in slot.noop:
            return
        risk = self.risk
        if risk.is_halted(name) and hook not in ("on_order", "on_fill", "on_stop"):
            return
        slot.stats.hooks += 1
        outer = self._in_hook
        self._in_hook = True
        try:
            result = getattr(slot.strategy, hook)(slot.ctx, *args)
            if result is not None:
                if not isinstance(result, Iterable) or isinstance(result, (str, bytes)):
                    # `return ctx.buy(...)` returns the order's ref (an int): the order is
                    # already placed, the return value is the mistake.
                    raise TypeError(f"{hook} returned {safe_repr(result, 60)} ({type(result).__name__}); "
                                    "a hook returns None or an iterable of intents (ctx.buy/sell/... "
                                    "already placed their intents: do not return their refs)")
                for intent in result:
                    slot.ctx.emit(intent)
        except Exception as e:  # F14: a strategy's bug halts that strategy only
            slot.stats.errors += 1
            slot.stats.last_error = f"{type(e).__name__}: {e}"
            log.exception("strategy %s raised in %s: halting it and cancelling its orders", name, hook)
            self.risk.halt(name, f"strategy raised {type(e).__name__} in {hook}: {e}")
            self._cancel_strategy(name)
        finally:
            self._in_hook = outer
        if risk.needs_cancel(name):
            self._cancel_strategy(name)

    @property
    def all_failed(self) -> bool:
        """Every strategy raised and is halted: nothing is left to trade (the runner ends
        the run as failed instead of idling out its duration)."""
        risk = self.risk
        return bool(self.slots) and all(
            slot.stats.errors > 0 and risk.is_halted(name) for name, slot in self.slots.items()
        )

    def _flush_denials(self) -> None:
        if self._in_hook:
            return
        while self._deferred:
            name, denial = self._deferred.popleft()
            slot = self.slots[name]
            if slot.started:
                self._call(name, "on_risk_denied", denial)

    def equity(self, name: str) -> Fraction:
        slot = self.slots[name]
        pos = slot.positions.position(slot.market)
        return pos.net(self.mark_price(slot.market))

    def equity_units(self, name: str) -> int:
        """``floor(equity(name))``: the integer counter units an equity mark records."""
        slot = self.slots[name]
        return slot.position.net_floor(self.mark_price(slot.market))

    def mark_price(self, market: Market) -> int | None:
        book = self.books[market]
        if book.best_bid is not None and book.best_ask is not None:
            return (book.best_bid + book.best_ask) // 2
        return self.last_price.get(market)

    def _mark(self, name: str) -> None:
        reasons = self.risk.on_equity(name, self.equity_units(name))  # floor: integer units
        if reasons:
            log.warning("risk limit for %s: %s", name, "; ".join(reasons))
            self._cancel_strategy(name)

    def poll_risk(self) -> None:
        """Called periodically by the driver: kill file, halted strategies' cancels."""
        self.risk.poll_kill_file()
        for name in self.slots:
            if self.risk.needs_cancel(name):
                self._cancel_strategy(name)

    # -- reporting -------------------------------------------------------------------------

    def _money(self, value: Fraction, market: Market) -> str:
        """Exact counter units as decimal text of the counter asset (truncated toward zero)."""
        return self.scales.format_amount(int(value), market.counter)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"strategies": {}}
        for name, slot in self.slots.items():
            pos = slot.positions.position(slot.market)
            mark = self.mark_price(slot.market)
            orders = [o for o in self.tracker if o.strategy == name]
            out["strategies"][name] = {
                "class": type(slot.strategy).__name__,
                "market": slot.market.name,
                "state": self.risk.state(name).value,
                "position": self.scales.format_amount(pos.base, slot.market.base),
                "position_units": pos.base,
                "realized_pnl": self._money(pos.realized, slot.market),
                "unrealized_pnl": self._money(pos.unrealized(mark), slot.market) if mark is not None else None,
                "net_pnl": self._money(pos.net(mark), slot.market),
                "fees": self.scales.format_amount(pos.fees, slot.market.counter),
                "volume_base": pos.volume_base,
                "trades": pos.trades,
                "orders_placed": len(orders),
                "orders_open": sum(1 for o in orders if o.is_open),
                "hooks": slot.stats.hooks,
                "intents": slot.stats.intents,
                "denials": slot.stats.denials,
                "denials_by_rule": dict(slot.stats.denials_by_rule),
                "errors": slot.stats.errors,
                "last_error": slot.stats.last_error or None,
            }
        return out


def _inherited_hooks(strategy: Strategy) -> frozenset[str]:
    """The hooks ``strategy`` does not override: the base class's do nothing, so the core
    need not build their arguments nor call them (a market maker ignores every trade)."""
    return frozenset(h for h in HOOKS
                     if getattr(getattr(strategy, h, None), "__func__", None) is getattr(Strategy, h))
