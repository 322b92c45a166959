"""The fast replay (backtests/fast.py) against the same hand-made recordings as the exact one.

Every queue-position, crossing and own-order case of tests/test_replay.py is run again with
:class:`backtests.fast.FastReplay` in place of :class:`backtests.replay.Replay` (their
expectations are about fills, so they hold for both paths), plus the fast path's own checks:
parity with a live run (S2), determinism, and what it refuses.
"""

from __future__ import annotations

import pytest

from backtests.fast import FastReplay
from tests import test_replay as T


@pytest.fixture(autouse=True)
def _fast_path(monkeypatch):
    monkeypatch.setattr(T, "Replay", FastReplay)


test_own_order_queues_behind_recorded_orders_at_its_price = T.test_own_order_queues_behind_recorded_orders_at_its_price
test_recorded_cancel_ahead_moves_us_up_the_queue = T.test_recorded_cancel_ahead_moves_us_up_the_queue
test_order_at_a_new_better_price_fills_first = T.test_order_at_a_new_better_price_fills_first
test_crossing_order_fills_against_the_recorded_book = T.test_crossing_order_fills_against_the_recorded_book
test_recorded_limit_order_crossing_our_quote_trades_with_it = T.test_recorded_limit_order_crossing_our_quote_trades_with_it
test_own_orders_in_a_recording_are_not_market_flow = T.test_own_orders_in_a_recording_are_not_market_flow
test_a_resnapshot_resynchronises_the_recorded_book = T.test_a_resnapshot_resynchronises_the_recorded_book
test_a_stand_in_sell_never_shows_in_the_strategy_feed = T.test_a_stand_in_sell_never_shows_in_the_strategy_feed
