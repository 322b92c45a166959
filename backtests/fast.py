"""The fast replay: the recorded market in compiled batches, the strategy's fills in the core.

::

    result = FastReplay(config, data, ReplayOptions(seed=1)).run()   # or run_backtest(..., fast=True)
    cftrade backtest configs/market_maker.yaml --data day.npz --fast
    cftrade bench replay --fast --busy --book-interval 1 --exact-events 0
    cftrade diff --config configs/market_maker.yaml --duration 600 --fast

:class:`backtests.replay.Replay` (the *exact* path) re-creates every recorded order in a
real exchange core, so every recorded event costs a core command, a notice to the strategy
session and a trip through the runtime: about 30-40 k events/s.  This path keeps what the
strategy's fills depend on and drops the rest:

* **The book is the strategy's own L3 view** (``TradingCore.books``, a numba arena that
  also holds the strategy's resting orders, flagged own).  Recorded events that cannot
  touch the strategy are applied to it by :func:`backtests.fast_kernels.k_scan`, thousands
  per call, without Python.
* **The exchange core holds only the strategy's orders.**  Whenever recorded flow reaches
  them the kernel stops and Python walks the queue the recorded aggressor would walk
  (price, then time, then id, with our orders where their arrival put them): recorded
  makers are filled by synthetic OrdersMatched/OrderClosed notices, ours by a stand-in
  taker order sent to the core, which matches, charges (fee out of the bid reservation,
  stochastic rounding) and settles them exactly as the exact path and the live exchange
  do.  When our own order crosses the recorded book, the recorded orders it can reach are
  placed in the core for that one command (in queue order) and the unfilled rest removed.
* **The strategy sees what it would see**: the same book, its own order notices from the
  core, recorded trades and closes; the stand-in orders never appear.  ``on_book`` runs on
  every change of the touch (a compiled stop), or per ``book_interval`` when the strategy
  conflates, exactly as live.

**What differs from the exact path** (tests/test_replay_fast.py pins the rest as equal).

1. *Rounding.*  Only the strategy's trades are made in the core, so only they draw from
   the stochastic-rounding stream: by default this path is the exact path with
   ``ReplayOptions(rounding="strategy")``.  With ``"shared"`` (``cftrade diff``'s default)
   the stream is advanced, before each trade in the core, by the draws the exact path's
   re-trades of the recorded trades since the last one would have made
   (``Replay._emulate_shared_rounding``: a row walked in Python draws once per order its
   walk fills, in walk order), so a live run's totals and fees are reproduced.  With either
   setting the two paths give the same fills -- price, quantity, time, side, total, fee --
   and the same ``final_hash`` for the four shipped strategies on generated recordings with
   one fee tier or the demo's two (30 min, seeds 1-8, both settings: 64 of 64 runs).
2. *Recorded orders are traded for what the recording says they held* -- on both paths:
   the exact path's copies pay the replay's fees and draws, but after each re-sent trade
   that reached the copy in full it is set to the recorded remaining
   (``Replay._follow``, ``Exchange.set_remaining``).  Where the replay itself changed an
   order, both keep what the replay left: when our order took flow that went to a recorded
   maker live, that maker keeps what it did not sell until the recording closes it
   ("held": its trades and close are walked in Python and our quotes' guard covers its
   price), and a recorded remaining is never taken above what the view holds (our crossing
   order may have taken part of it).
3. The stand-in recorded users are not charged or accounted (their balances are not part
   of the result), and recorded events reach the strategy's view in compiled batches, not
   as notices (a spy on ``core.on_notice`` sees only the strategy's own and walked ones).
   A walked trade shows the recorded taker's id but not its remaining, and our own fills
   the stand-in taker's order (the exact path shows the recorded taker on both), so
   ``Trade.aggressor`` in ``on_trade`` can differ for our fills.
4. *Refused* (ConfigError, never a silent difference): a feed latency > 0 (notices reach
   the strategy as soon as the exchange produced them, after the recorded events of that
   microsecond, as the exact path with feed latency 0 does); tickers (a strategy that
   overrides ``on_ticker``, or ``tickers=True``).

**Speed** (BENCHMARKS.md "Replay"): the per-event path -- no order of ours reached, no
``on_book`` due -- is :func:`backtests.fast_kernels.k_scan`, about 0.13 us per event;
Python runs only for the strategy's own activity (its hooks, its commands, the flow that
reaches its orders).  A strategy that only watches replays a busy 1 M-event recording at
4-6 M events/s; the shipped market maker at 0.6-0.9 M/s with ``book_interval`` 1 s and
~1.7 M/s at 10 s, where its hooks, orders and fills (TradingCore, risk governor, exchange
core) take ~85 % of the time.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

import numpy as np

from backtests import fast_kernels as FK
from backtests.replay import (
    _D_BALANCES,
    _D_CANCEL,
    _D_NOTICE,
    _D_ORDERS,
    _D_PLACE,
    _D_START,
    _INF,
    _SHUTDOWN_US,
    STRATEGY_USER_ID,
    Replay,
    ReplayData,
    ReplayOptions,
    Snapshot,
    _Progress,
)
from backtests.result import BacktestResult
from engine.config import RunConfig
from engine.errors import ConfigError
from engine.exchange.rounding import PPM
from engine.protocol.messages import (
    UNSET,
    CancelOrder,
    GetBalances,
    GetOrders,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    WatchOrders,
)
from engine.scale import Market
from engine.state.events import (
    EV_CLOSE,
    EV_MATCH,
    EV_OPEN,
    EVF_HAS_ASK,
    EVF_HAS_BID,
    EVF_OWN,
    EVF_OWN_ASK,
)
from engine.strategy import Strategy

__all__ = ["FastReplay"]

OWN_ID_BASE = 1 << 48
"""The replay core numbers orders from here, above any recorded id, so that the strategy's
orders and the recorded ones share the one view without clashing (and, at one time, ours
queue behind recorded ones: FIFO is time, then id)."""

_WALK = 4096  # most resting orders one walk may visit


class FastReplay(Replay):
    """A replay with the same inputs, options and result as :class:`Replay` (see module doc)."""

    DEFAULT_ROUNDING = "strategy"

    def __init__(self, config: RunConfig, data: ReplayData, options: ReplayOptions | None = None, *,
                 config_path: str = "") -> None:
        super().__init__(config, data, options, config_path=config_path)
        opts = self.options
        if opts.feed_latency_us:
            raise ConfigError("the fast replay takes feed_latency_us = 0 only; use the exact replay for feed latency")
        if self._tickers:
            raise ConfigError("the fast replay builds no tickers (a strategy overrides on_ticker, or tickers=True); "
                              "use the exact replay")
        if self.rounding == "shared":  # replay.py: the draws of the exact path's re-trades, emulated
            self._emulate_shared_rounding(data.events["recv_time"])
        self.exchange._next_id = OWN_ID_BASE
        # traded markets get a small index; rows of other markets are -1 (skipped)
        self._kmarkets: list[Market] = []
        mkt = np.full(len(data.events), -1, dtype=np.int8)
        self._k_of: dict[int, int] = {}
        for i, m in self._mi.items():
            k = len(self._kmarkets)
            self._kmarkets.append(m)
            self._k_of[i] = k
            mkt[data.market == i] = k
        self._mkt = mkt
        self._stop_trade = [
            any(type(s.strategy).on_trade is not Strategy.on_trade for s in self.core.slots.values() if s.market is m)
            for m in self._kmarkets
        ]
        self._pending: list[Notice] = []
        self._taken: set[int] = set()
        # recorded orders holding more than the recording says (ours took flow that, live,
        # went to them): id -> (market, is a bid, price); the kernel treats them as ours
        self._held: dict[int, tuple[Market, bool, int]] = {}
        self._taken_arr = np.zeros(0, dtype=np.int64)
        self._fdeferred: list[tuple[Market, int]] = []
        self._own_rec: set[int] = set()
        self._out = np.zeros(4, dtype=np.int64)
        self._w_id = np.zeros(_WALK, dtype=np.int64)
        self._w_rem = np.zeros(_WALK, dtype=np.int64)
        self._w_price = np.zeros(_WALK, dtype=np.int64)
        self._w_own = np.zeros(_WALK, dtype=np.int64)
        self.interactions = 0
        self.batches = 0

    # -- the exchange side -------------------------------------------------------------

    def _deliver(self, notice: Notice) -> None:
        self._pending.append(notice)

    def _drain(self, hide: set[int] | None = None, rename: dict[int, int] | None = None,
               cmd_end: int = 0) -> None:
        """Deliver what the core produced, at once (feed latency 0): stand-in orders hidden,
        materialised recorded orders under their recorded ids.  ``cmd_end``: the notices
        before it came from our command, after it from removing what it left of them."""
        pend = self._pending
        if not pend:
            return
        self._pending = []
        for j, n in enumerate(pend):
            t = type(n)
            if hide or rename:
                if t is OrderOpened or t is OrderClosed:
                    oid: Any = n.id  # type: ignore[attr-defined]
                    if hide and oid in hide:
                        continue
                    if rename and oid in rename:
                        if t is OrderOpened or (n.quantity != 0 and j >= cmd_end):  # type: ignore[attr-defined]
                            continue  # placed or removed again: the view has it already
                        # filled, or closed by our command as dust (a bid whose reservation
                        # cannot pay for one more unit): it leaves the view, as in the core
                        n = OrderClosed(id=rename[oid], base=n.base, counter=n.counter,  # type: ignore[attr-defined]
                                        quantity=n.quantity, price=n.price)  # type: ignore[attr-defined]
                elif t is OrdersMatched and rename:
                    m: Any = n
                    if m.bid in rename or m.ask in rename:
                        n = _renamed(m, rename)
            self._receive(_D_NOTICE, n, None)

    def _notice(self, n: Notice) -> None:
        self._receive(_D_NOTICE, n, None)

    def _book(self, market: Market) -> Any:
        return self.core.books[market]

    def _own_best(self, market: Market) -> tuple[int, int]:
        book = self.exchange._books.get(market.codes)
        if book is None:
            return 0, 0
        bk, ak = book.bids.keys, book.asks.keys
        return (bk[-1] if bk else 0), (-ak[-1] if ak else 0)

    def _apply_snapshot(self, snap: Snapshot) -> None:
        market = self._mi.get(snap.market)
        if market is None:
            return
        book = self._book(market)
        if book.ready:
            book.reset()
        book.load_snapshot(snap.reply)
        for o in self.exchange.open_orders(STRATEGY_USER_ID):  # a re-snapshot: ours stay
            if (o.base, o.counter) == market.codes:
                book.apply(OrderOpened(id=o.id, tonce=o.tonce or 0, base=o.base, counter=o.counter,
                                       quantity=o.quantity, price=o.price, time=o.time))
        if self.core.ready:
            self.core._book_changed(market)
            self._flush()

    def _walk(self, market: Market, taker_buy: bool, price: int, quantity: int, taker_id: int | None,
              limit_order: bool = False, recorded: tuple[int, int] | None = None) -> int:
        """Recorded aggressive flow: ``quantity`` at ``price`` or better through the queue as
        it stands in the replay (ours included).  Returns what found nothing to trade with.

        ``limit_order``: the aggressor is a recorded limit order arriving (an OrderOpened
        that crosses): against ours it trades as the limit order it was, so a bid pays its
        fee out of its reservation and may buy a little less (as in the exact path);
        otherwise it is a recorded trade, re-sent for exactly its quantity.  ``recorded``:
        (maker id, remaining) of that trade -- when it reaches that maker in full, the
        recorded remaining is used (a bid's can drop by more than it bought)."""
        book = self._book(market)
        n = FK.side_orders(book._a, not taker_buy, price, self._w_id, self._w_rem, self._w_price, self._w_own)
        ids, rems, prices, owns = (self._w_id[:n].tolist(), self._w_rem[:n].tolist(),
                                   self._w_price[:n].tolist(), self._w_own[:n].tolist())
        left = quantity
        maker_got = 0
        base, counter = market.codes
        for oid, rem, p, own in zip(ids, rems, prices, owns, strict=True):
            if left <= 0:
                break
            if own:
                # a limit bid for all it has left: its reservation, hence what its fee
                # leaves it to buy, is the one the exact path's order would have
                # (a sell at our bid's own price: what our bid cannot buy of it -- its fee
                # comes out of its reservation -- must not reach our next bid in the core,
                # past recorded orders between them; it stays in ``left`` and walks on, as
                # the exact path's limit order does)
                x = left if limit_order and taker_buy else min(left, rem)
                left -= self._core_take(market, taker_buy, price if limit_order and taker_buy else p, x, limit_order)
                continue
            x = min(left, rem)
            if not taker_buy and self._bid_cap(market, rem, p) <= 0:
                # a recorded bid pays for a fill and its fee out of what it reserves (exactly
                # its remaining value): one that cannot pay for a unit is dust, which the core
                # closes and passes over (live, its OrderClosed came first; here it may be
                # waiting for the end of the instant: ours took from it, see _close_deferred)
                self._notice(OrderClosed(id=oid, base=base, counter=counter, quantity=rem, price=p))
                continue
            left -= x
            after = rem - x
            self._recorded_fill(market, taker_buy, x, p)
            if recorded is not None and recorded[0] == oid:
                if x == quantity and oid not in self._held:
                    # the recording's remaining is the truth (a bid's fee comes out of its
                    # reservation) unless the replay took more of it than live
                    after = min(after, recorded[1])
                maker_got = x
            total = self.core.scales.exact_total(x, p, market)
            tot = total[0] // total[1]
            t = self.now_us
            if taker_buy:
                n_ = OrdersMatched(bid=taker_id if taker_id is not None else UNSET, ask=oid, base=base, counter=counter,
                                   quantity=x, price=p, total=tot, ask_rem=after, time=t)
            else:
                n_ = OrdersMatched(bid=oid, ask=taker_id if taker_id is not None else UNSET, base=base, counter=counter,
                                   quantity=x, price=p, total=tot, bid_rem=after, time=t)
            self._notice(n_)
            if after == 0:
                self._notice(OrderClosed(id=oid, base=base, counter=counter, quantity=0, price=p))
        if recorded is not None and maker_got < quantity and recorded[0] not in self._held:
            # ours took (some of) the flow that went to this maker live: it keeps what it
            # did not sell, as the exact path's copy does, until the recording closes it
            v = book.order(recorded[0])
            if v is not None:
                self._held[recorded[0]] = (market, not taker_buy, v.price)
                self._set_taken()
        return left

    def _recorded_fill(self, market: Market, taker_buy: bool, x: int, price: int) -> None:
        """A recorded maker got ``x`` of walked flow (rounding "shared" draws for it here)."""

    def _bid_cap(self, market: Market, rem: int, price: int) -> int:
        """What a recorded bid of ``rem`` at ``price`` can buy as a maker: the core's cap (its
        reservation, ``ceil(rem * price)``, less the maker fee of the recorded users' stand-in)."""
        ex = self.exchange
        book = ex._books[market.codes]
        mul, den = book.mul, book.den
        reserved = -((-rem * price * mul) // den)
        ppm = ex._fee_ppm(ex._accounts[self.maker_uid], book, True)
        return ((reserved * PPM) // (PPM + ppm) * den) // (price * mul)

    def _core_take(self, market: Market, taker_buy: bool, price: int, x: int, limit_buy: bool = False) -> int:
        """A stand-in taker trades ``x`` with our best order on the other side, in the core:
        a sell is a limit order at ``price``; a buy a market order for ``x`` (a recorded
        trade's quantity) or, with ``limit_buy``, a limit bid at ``price``."""
        ex = self.exchange
        base, counter = market.codes
        self.stats.flow_sent += 1
        self.stats.flow_quantity += x
        if taker_buy and limit_buy:
            r = ex.handle(self._t_sess, PlaceOrder(base=base, counter=counter, quantity=x, price=price))
        elif taker_buy:
            r = ex.handle(self._t_sess, PlaceOrder(base=base, counter=counter, quantity=x))
        else:
            r = ex.handle(self._t_sess, PlaceOrder(base=base, counter=counter, quantity=-x, price=price))
        hide: set[int] = set()
        got = sum(n.quantity for n in self._pending if type(n) is OrdersMatched)  # type: ignore[attr-defined]
        if type(r) is PlaceOrderReply:
            hide.add(r.id)  # type: ignore[arg-type]
            rest = ex.open_orders(self.taker_uid)
            if rest:
                self.stats.transient_rests += 1
                ex.handle(self._t_sess, CancelOrder(id=r.id))  # type: ignore[arg-type]
            if taker_buy and limit_buy:
                # a limit bid pays its fee out of its reservation: what it did not buy and
                # cannot rest with is gone, as it is for the exact path's copy
                got = x - (rest[0].quantity if rest else 0)
        self._drain(hide=hide)
        return got

    def _interact(self, i: int, market: Market) -> None:
        """One recorded event the compiled scan stopped at (see fast_kernels)."""
        self.interactions += 1
        e = self.data.events[i]
        kind, flags, oid = int(e["kind"]), int(e["flags"]), int(e["id"])
        stats = self.stats
        base, counter = market.codes
        if kind == EV_OPEN:
            stats.recorded_opens += 1
            if flags & EVF_OWN:
                stats.own_recorded += 1
                self._own_rec.add(oid)
                return
            q, p = int(e["quantity"]), int(e["price"])
            left = self._walk(market, q > 0, p, abs(q), oid, limit_order=True)
            if left > 0:
                self._notice(OrderOpened(id=oid, base=base, counter=counter, quantity=left if q > 0 else -left,
                                         price=p, time=int(e["exch_time"])))
        elif kind == EV_CLOSE:
            stats.recorded_cancels += 1
            if flags & EVF_OWN:
                stats.own_recorded += 1
                self._own_rec.discard(oid)
                return
            if oid in self._taken:
                # Live, our own order took this one; ours may not have arrived yet in the
                # replay (it is sent in reaction to notices of this instant): close it
                # when the instant ends.
                self._set_taken(remove=oid)
                self._fdeferred.append((market, oid))
                return
            if self._held.pop(oid, None) is not None:
                self._set_taken()
            self._notice(OrderClosed(id=oid, base=base, counter=counter, quantity=int(e["quantity"]),
                                     price=int(e["price"])))
        elif kind == EV_MATCH:
            stats.recorded_trades += 1
            book = self._book(market)
            has_bid, has_ask = flags & EVF_HAS_BID, flags & EVF_HAS_ASK
            ask_id = int(e["ask_id"])
            bid_rest = bool(has_bid) and oid in book
            ask_rest = bool(has_ask) and ask_id in book
            if not has_bid:
                taker_buy = True
            elif not has_ask:
                taker_buy = False
            else:
                taker_buy = ask_rest if bid_rest != ask_rest else oid > ask_id
            if taker_buy:
                if flags & EVF_OWN:
                    self._set_taken(add=ask_id)  # our replayed order matches by itself
                    return
                if bid_rest:
                    return  # it rests in the replay already: it matched when it arrived
            elif flags & EVF_OWN_ASK:
                self._set_taken(add=oid)
                return
            elif ask_rest:
                return
            taker = (oid if has_bid else None) if taker_buy else (ask_id if has_ask else None)
            maker = (ask_id, int(e["ask_remaining"])) if taker_buy else (oid, int(e["remaining"]))
            left = self._walk(market, taker_buy, int(e["price"]), int(e["quantity"]), taker, recorded=maker)
            stats.flow_short += left

    def _set_taken(self, add: int | None = None, remove: int | None = None) -> None:
        if add is not None:
            self._taken.add(add)
        if remove is not None:
            self._taken.discard(remove)
        self._taken_arr = np.array(sorted(self._taken | self._held.keys()), dtype=np.int64)

    def _guard_best(self, market: Market) -> tuple[int, int]:
        """The best prices the kernel must not trade through without Python: ours and
        those of held recorded orders (flow at or beyond them walks the queue in Python)."""
        bid, ask = self._own_best(market)
        for m, is_bid, p in self._held.values():
            if m is market:
                if is_bid and p > bid:
                    bid = p
                elif not is_bid and (ask == 0 or p < ask):
                    ask = p
        return bid, ask

    def _close_deferred(self) -> None:
        items, self._fdeferred = self._fdeferred, []
        for market, oid in items:
            view = self._book(market).order(oid)
            if view is not None:
                base, counter = market.codes
                self._notice(OrderClosed(id=oid, base=base, counter=counter, quantity=view.quantity, price=view.price))

    # -- the strategy side ---------------------------------------------------------------

    def _subscribe(self) -> None:
        ex = self.exchange
        self._s_sess = s = ex.open_internal_session(STRATEGY_USER_ID, self._deliver)
        self._receive(_D_BALANCES, ex.handle(s, GetBalances()), None)
        self._receive(_D_ORDERS, ex.handle(s, GetOrders()), None)
        for m in self.markets:
            base, counter = m.codes
            ex.handle(s, WatchOrders(base=base, counter=counter, watch=True))  # the view is the recorded book
        self._receive(_D_START, None, None)

    def _arrive(self, out: Any, cmd: Any) -> None:
        ex = self.exchange
        rename: dict[int, int] = {}
        if type(cmd) is PlaceOrder:
            rename = self._materialise(cmd)
        reply = ex.handle(self._s_sess, cmd)
        cmd_end = len(self._pending)
        for rid in rename:  # what the command left of them goes (an error if it took all)
            ex.handle(self._m_sess, CancelOrder(id=rid))
        self._drain(rename=rename, cmd_end=cmd_end)
        self._receive(_D_PLACE if out.kind == "place" else _D_CANCEL, out, reply)

    def _materialise(self, cmd: PlaceOrder) -> dict[int, int]:
        """Place in the core, for this one command, the recorded orders it can trade with
        (the other side at its price or better, in queue order).  Returns core id -> recorded id."""
        market = next((m for m in self.markets if m.codes == (cmd.base, cmd.counter)), None)
        if market is None:
            return {}
        buy = (cmd.quantity is not UNSET and cmd.quantity > 0) or (cmd.quantity is UNSET and cmd.total is not UNSET
                                                                   and cmd.total > 0)
        limit = cmd.price if cmd.price is not UNSET else 0
        book = self._book(market)
        best = book.best_ask if buy else book.best_bid
        if best is None or (limit and ((buy and limit < best) or (not buy and limit > best))):
            return {}
        n = FK.side_orders(book._a, not buy, limit, self._w_id, self._w_rem, self._w_price, self._w_own)
        want = abs(cmd.quantity) if cmd.quantity is not UNSET else None
        budget = abs(cmd.total) if cmd.total is not UNSET else None
        ex, sess = self.exchange, self._m_sess
        base, counter = market.codes
        rename: dict[int, int] = {}
        have = spent = 0
        for j in range(n):
            if self._w_own[j]:
                continue
            rid, rem, p = int(self._w_id[j]), int(self._w_rem[j]), int(self._w_price[j])
            r = ex.handle(sess, PlaceOrder(base=base, counter=counter, quantity=-rem if buy else rem, price=p,
                                           persist=True))
            if type(r) is PlaceOrderReply:
                rename[r.id] = rid  # type: ignore[index]
            have += rem
            num, den = self.core.scales.exact_total(rem, p, market)
            spent += num // den
            # enough for the order (one more level's worth is harmless: removed afterwards)
            if (want is not None and have > want) or (budget is not None and spent > budget):
                break
        self._pending = [n_ for n_ in self._pending if not (type(n_) is OrderOpened and n_.id in rename)]  # type: ignore[attr-defined]
        return rename

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> BacktestResult:
        t_wall = time.perf_counter()
        data, opts = self.data, self.options
        ev = data.events
        n = len(ev)
        t_sub, t_end = self._window()
        self._push_timer(t_sub + opts.order_latency_us, 0)  # _T_SUBSCRIBE
        snaps = data.snapshots
        n_snaps = len(snaps)
        si = 0
        to_ex, timers = self._to_ex, self._timers
        times = ev["recv_time"]
        mkt = self._mkt
        out = self._out
        core = self.core
        progress = _Progress(data.total_events) if opts.progress else None
        kmarkets = self._kmarkets
        slots_of = [[s for s in core.slots.values() if s.market is m] for m in kmarkets]
        i = 0
        seg_lim, seg_ev, seg_mkt = -1, ev, mkt
        while True:
            snap_due = si < n_snaps and snaps[si].pos <= i
            if snap_due:
                t_rec = snaps[si].t_us
            elif i < n:
                t_rec = int(times[i])
            else:
                t_rec = _INF
            if t_rec > t_end:
                t_rec = _INF
                snap_due = False
            t_x = to_ex[0][0] if to_ex else _INF
            t_t = timers[0][0] if timers else _INF
            if self._fdeferred and t_rec > self.now_us and min(t_x, t_t) > self.now_us:
                self._close_deferred()
                continue
            if t_rec == _INF and not self.stopped and t_x > t_end and t_t > t_end:
                self._stop(t_end)
                continue
            if t_rec <= t_x and t_rec <= t_t and t_rec != _INF:
                if t_rec > self.now_us:
                    self.now_us = t_rec
                if snap_due:
                    self._apply_snapshot(snaps[si])
                    si += 1
                    continue
                k = int(mkt[i])
                if k < 0:
                    i += 1  # a market no strategy trades
                    continue
                market = kmarkets[k]
                book = core.books[market]
                lim = snaps[si].pos if si < n_snaps else n
                if lim != seg_lim:  # the views the kernel scans change only at a snapshot
                    seg_lim, seg_ev, seg_mkt = lim, ev[:lim], mkt[:lim]
                until = min(t_x, t_t, t_end) + 1  # recorded events of one time come first
                stop_top = 0
                if core.ready:
                    stop_top = 1
                    waits = [s.next_book_us for s in slots_of[k] if s.started]
                    if waits and all(s.book_interval_us for s in slots_of[k] if s.started):
                        first = min(waits)
                        if self.now_us < first:  # every hook conflated until ``first``
                            stop_top = 0
                            until = min(until, first)
                own_bid, own_ask = self._guard_best(market)
                out[:] = 0
                j, st = FK.k_scan(book._a, seg_ev, seg_mkt, k, i, until, own_bid, own_ask, self._taken_arr,
                                  stop_top, int(self._stop_trade[k]), out)
                self.batches += 1
                book._refresh()
                self.events_done += (j - i) - int(out[2])
                i = j
                if out[3] > self.now_us:
                    self.now_us = int(out[3])
                if out[1]:
                    core.last_price[market] = int(out[1])
                if out[0] and core.ready:
                    core._book_changed(market)
                    core._flush_denials()
                    self._after_hooks()
                if st == FK.INTERACT or st == FK.TRADE:
                    t = int(times[i])
                    if t > self.now_us:
                        self.now_us = t
                    self.events_done += 1
                    if st == FK.TRADE:
                        self._trade_event(i, market)
                    else:
                        self._interact(i, market)
                    self._flush()
                    i += 1
                elif st == FK.GROW:
                    book._grow()
                if progress is not None:
                    progress.show(i + si)
                continue
            if self.stopped and min(t_x, t_t) > t_end + _SHUTDOWN_US:
                break
            if t_x <= t_t:
                t, out_, cmd = to_ex.popleft()
                if t > self.now_us:
                    self.now_us = t
                self._arrive(out_, cmd)
            else:
                t, _, kind_t, name = heapq.heappop(timers)
                if t > self.now_us:
                    self.now_us = t
                self._timer(kind_t, name)
                self._drain()
        self._rows_done, self._snaps_done = i, si
        if progress is not None:
            progress.done(data.total_events)
        res = self._result(time.perf_counter() - t_wall)
        res.summary["replay"]["mode"] = "fast"
        res.summary["replay"]["interactions"] = self.interactions
        res.summary["replay"]["batches"] = self.batches
        return res

    def _after_hooks(self) -> None:
        """What Replay._receive does after the core ran a hook: send intents, mark fills."""
        self._flush()
        self._mark_new_fills()

    def _trade_event(self, i: int, market: Market) -> None:
        """A recorded trade for a strategy that overrides ``on_trade``: as a notice."""
        e = self.data.events[i]
        flags = int(e["flags"])
        if flags & (EVF_OWN | EVF_OWN_ASK):
            self._interact(i, market)
            return
        book = self._book(market)
        # the same decision the kernel makes: pass it on as recorded, or walk the queue
        oid, ask_id, p = int(e["id"]), int(e["ask_id"]), int(e["price"])
        has_bid, has_ask = flags & EVF_HAS_BID, flags & EVF_HAS_ASK
        own_bid, own_ask = self._guard_best(market)
        plain = False
        if has_bid and not (has_ask and ask_id in book) and oid in book:
            v = book.order(oid)
            plain = (v is not None and book.best_bid == p and not (own_bid and own_bid >= p)
                     and v.quantity == int(e["remaining"]) + int(e["quantity"]))
        elif has_ask and ask_id in book and not (has_bid and oid in book):
            v = book.order(ask_id)
            plain = (v is not None and book.best_ask == p and not (own_ask and own_ask <= p)
                     and v.quantity == int(e["ask_remaining"]) + int(e["quantity"]))
        if not plain:
            self._interact(i, market)
            return
        self.stats.recorded_trades += 1
        base, counter = market.codes
        self._notice(OrdersMatched(
            bid=oid if has_bid else UNSET, ask=ask_id if has_ask else UNSET, base=base, counter=counter,
            quantity=int(e["quantity"]), price=p, total=int(e["total"]),
            bid_rem=int(e["remaining"]) if has_bid else UNSET, ask_rem=int(e["ask_remaining"]) if has_ask else UNSET,
            time=int(e["exch_time"])))


def _renamed(m: OrdersMatched, rename: dict[int, int]) -> OrdersMatched:
    import msgspec

    changes: dict[str, Any] = {}
    if m.bid in rename:
        changes["bid"] = rename[m.bid]  # type: ignore[index]
    if m.ask in rename:
        changes["ask"] = rename[m.ask]  # type: ignore[index]
    return msgspec.structs.replace(m, **changes)
