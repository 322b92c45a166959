"""End to end: orders, balances, positions and tonces against the local exchange core.

Our user trades through ``Exchange.handle`` on an internal session; its notices go to a
queue, and replies are applied at random later moments (before or after their notices, as
the protocol allows: P5), while a second user trades against us.  At every quiescence the
ledger oracle must hold: nothing anticipated (P9), the view equals GetBalances and the
exchange's balances (O5), the tracked open orders are exactly the exchange's (O2, O3), no
UNKNOWN intent (O7), tonces strictly increasing (O8), positions and volumes agree (O4).
"""

from __future__ import annotations

import itertools
import random
from collections import deque

import pytest

from engine.exchange.core import Exchange
from engine.exchange.settings import ExchangeSettings, FeeTier, LimitsSettings, UserSettings
from engine.protocol.messages import (
    BalanceChanged,
    CancelAllOrders,
    ErrorReply,
    GetBalances,
    GetBalancesReply,
    GetOrders,
    GetOrdersReply,
    PlaceOrder,
)
from engine.scale import GBP, XBT, XBT_GBP, Scales
from engine.state.balances import BalanceView
from engine.state.orders import OrderState, OrderTracker
from engine.state.positions import PositionBook
from engine.state.tonces import TonceAllocator
from engine.strategy import Side

M = XBT_GBP
US, THEM = 1, 2


class Run:
    def __init__(self, api: int, seed: int, fee_ppm: tuple[int, int] = (300, 300)) -> None:
        self.rng = random.Random(seed)
        self.scales = Scales(api)  # type: ignore[arg-type]
        users = [
            UserSettings(user_id=u, demo=True, balances={"GBP": "100000.00", "XBT": "20"}) for u in (US, THEM)
        ]
        settings = ExchangeSettings(
            users=users,
            api_version=api,
            limits=LimitsSettings(enabled=False),
            fees=[FeeTier(min_volume="0", maker_ppm=fee_ppm[0], taker_ppm=fee_ppm[1])],
        )
        self.now_us = itertools.count(1_700_000_000_000_000, 997)
        self.ex = Exchange(settings, clock_us=self.now_us.__next__, rng=random.Random(seed + 1))
        self.inbox: deque = deque()
        self.us = self.ex.open_internal_session(US, self.inbox.append)
        self.them = self.ex.open_internal_session(THEM)
        self.t = 0.0
        self.orders = OrderTracker(clock=lambda: self.t)
        self.view = BalanceView(self.scales, clock=lambda: self.t)
        self.positions = PositionBook(self.scales)
        self.tonces = TonceAllocator(clock=lambda: int(self.t * 1e6))
        self.replies: list[tuple[str, object, object]] = []
        self.refs = itertools.count(1)
        self.sent_tonces: list[int] = []
        reply = self.ex.handle(self.us, GetBalances())
        assert isinstance(reply, GetBalancesReply)
        self.view.on_balances(reply)
        self.start = {a: av + res for a, (av, res) in self.ex.balances(US).items()}
        self.unit = self.scales.amount_scale(XBT)

    # -- our side ----------------------------------------------------------------------------

    def place(self) -> None:
        r = self.rng
        side = r.choice((Side.BUY, Side.SELL))
        qty = r.randrange(1, 3 * self.unit)
        tonce = self.tonces.next()
        self.sent_tonces.append(tonce)
        if r.random() < 0.8:
            price = 5_000_000 + r.randrange(-4000, 4000)
            order = self.orders.place(next(self.refs), M, side, quantity=qty, price=price, tonce=tonce, epoch=self.tonces.epoch)
        elif r.random() < 0.5:
            order = self.orders.place(next(self.refs), M, side, quantity=qty, tonce=tonce)
        else:
            order = self.orders.place(next(self.refs), M, side, total=r.randrange(1, 5_000_000), tonce=tonce)
        self.view.on_place_sent(order)
        self.replies.append(("place", order, self.ex.handle(self.us, order.to_command())))

    def cancel(self) -> None:
        live = [o for o in self.orders.open_orders() if o.price is not None and o.state is not OrderState.PENDING_CANCEL]
        if live:
            order = self.rng.choice(live)
            self.orders.on_cancel_sent(order)
            self.replies.append(("cancel", order, self.ex.handle(self.us, order.cancel_command())))

    def cancel_all(self) -> None:
        self.tonces.begin_cancel_all()
        self.replies.append(("cancel_all", None, self.ex.handle(self.us, CancelAllOrders())))

    # -- the other side ----------------------------------------------------------------------

    def counterparty(self) -> None:
        r = self.rng
        side = r.choice((1, -1))
        qty = r.randrange(1, 3 * self.unit) * side
        if r.random() < 0.7:
            cmd = PlaceOrder(base=XBT.code, counter=GBP.code, quantity=qty, price=5_000_000 + r.randrange(-4000, 4000))
        else:
            cmd = PlaceOrder(base=XBT.code, counter=GBP.code, quantity=qty)
        self.ex.handle(self.them, cmd)

    # -- delivery ----------------------------------------------------------------------------

    def deliver_notice(self) -> None:
        n = self.inbox.popleft()
        if isinstance(n, BalanceChanged):
            self.view.on_balance_changed(n)
            return
        for ev in self.orders.on_notice(n):
            self.view.apply(ev)
            self.positions.apply(ev)

    def deliver_reply(self, i: int) -> None:
        kind, order, reply = self.replies.pop(i)
        if kind == "place":
            for ev in self.orders.on_place_reply(order, reply):  # type: ignore[arg-type]
                self.view.apply(ev)
                self.positions.apply(ev)
            if isinstance(reply, ErrorReply):
                self.view.on_place_failed(order)  # type: ignore[arg-type]
            elif order.tonce is not None:  # type: ignore[union-attr]
                self.tonces.confirm(order.tonce, order.epoch)  # type: ignore[union-attr]
        elif kind == "cancel":
            self.orders.on_cancel_reply(order, reply)  # type: ignore[arg-type]
        else:
            self.orders.on_cancel_all_reply(reply)  # type: ignore[arg-type]

    def quiesce(self) -> None:
        while self.inbox or self.replies:
            if self.replies and (not self.inbox or self.rng.random() < 0.3):
                self.deliver_reply(self.rng.randrange(len(self.replies)))
            else:
                self.deliver_notice()

    def step(self) -> None:
        self.t += 0.001
        x = self.rng.random()
        if x < 0.30:
            self.place()
        elif x < 0.42:
            self.cancel()
        elif x < 0.80:
            self.counterparty()
        elif x < 0.805:
            self.cancel_all()
        else:
            for _ in range(self.rng.randrange(1, 8)):
                if self.replies and (not self.inbox or self.rng.random() < 0.25):
                    self.deliver_reply(self.rng.randrange(len(self.replies)))
                elif self.inbox:
                    self.deliver_notice()

    # -- the ledger oracle -------------------------------------------------------------------

    def check(self) -> None:
        self.ex.check_invariants()
        view, tracker = self.view, self.orders
        assert view.anticipated() == [] and view.surprises() == [] and view.stuck_deltas(self.t + 10) == []
        reply = self.ex.handle(self.us, GetBalances())
        assert isinstance(reply, GetBalancesReply)
        assert view.compare(reply) == {}  # O5
        for asset, (avail, _) in self.ex.balances(US).items():
            assert view.available(asset) == avail
        exch = {o.id: abs(o.quantity) for o in self.ex.open_orders(US)}
        assert {o.id: o.remaining for o in tracker.open_orders()} == exch  # O2 + O3
        audit = self.ex.handle(self.us, GetOrders())
        assert isinstance(audit, GetOrdersReply)
        assert tracker.apply_open_orders(audit, requested_at=self.t).clean
        assert tracker.unknown_orders() == [] and tracker.stats.unattributed == 0  # O7
        assert tracker.stats.duplicate_fills == 0
        assert all(b > a for a, b in zip(self.sent_tonces, self.sent_tonces[1:], strict=False))  # O8
        # O4 in aggregate: positions, fees and volumes agree with the exchange's books.
        pos = self.positions.position(M)
        total = {a: av + res for a, (av, res) in self.ex.balances(US).items()}
        assert total[XBT.code] - self.start[XBT.code] == pos.base
        assert total[GBP.code] - self.start[GBP.code] == pos.realized - pos.cost - pos.fees
        assert pos.volume_base == self.ex.trade_volume(US, XBT.code)
        assert sum(o.counter_fees for o in tracker) == pos.fees


@pytest.mark.parametrize("api", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ledger_oracle_against_the_exchange_core(api, seed):
    run = Run(api, seed)
    for step in range(1, 2_501):
        run.step()
        if step % 500 == 0:
            run.quiesce()
            run.check()
    # The run must have exercised what it claims to check.
    st = run.orders.stats
    assert st.fills > 200 and run.view.stats.matched > 1000
    states = {o.state for o in run.orders}
    assert {OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED} <= states
    assert any(o.price is None for o in run.orders) and any(o.remaining != (o.quantity or 0) - o.filled for o in run.orders if o.side is Side.BUY and o.price)


def test_impl_guide_example_on_the_exchange_core_v1():
    """The guide's worked example end to end: the core's refund equals the view's."""
    run = Run(1, 7, fee_ppm=(300, 300))
    assert run.scales.api == 1
    # They offer 0.1234 XBT at 12345.00; we bid for 1.2345 XBT at that price.
    run.ex.handle(run.them, PlaceOrder(base=XBT.code, counter=GBP.code, quantity=-1234, price=1234500))
    order = run.orders.place(1, M, Side.BUY, quantity=12345, price=1234500, tonce=run.tonces.next())
    run.view.on_place_sent(order)
    reply = run.ex.handle(run.us, order.to_command())
    run.replies.append(("place", order, reply))
    run.quiesce()
    assert order.filled == 1234 and order.remaining == 11110  # not 11111: the fee came out
    fill = order.fills[0]
    assert (fill.total, fill.counter_fee) in {(152338, 46), (152337, 46), (152338, 45), (152337, 45)}
    run.check()  # the refund the view anticipated is exactly what the core returned
