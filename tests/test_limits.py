"""The pure limiters of LIMITS.md (the trio governor on top is tested in test_governor)."""

from __future__ import annotations

import pytest

from engine.limits import (
    DEFAULT_LIMITS,
    METRIC_FOR_METHOD,
    Limit,
    SlidingWindow,
    TokenBucket,
    make_limiter,
)
from engine.protocol.messages import COMMANDS


def test_limits_md_table():
    assert DEFAULT_LIMITS["orders"] == Limit(1000, 1000.0, "user")
    assert DEFAULT_LIMITS["info"] == Limit(10, 10.0, "session")
    assert DEFAULT_LIMITS["auth"] == Limit(1000, 3600.0, "user")
    assert DEFAULT_LIMITS["records"] == Limit(10, 60.0, "user")
    # cancels and market estimates count as order placements
    for m in ("PlaceOrder", "CancelOrder", "CancelAllOrders", "EstimateMarketOrder"):
        assert METRIC_FOR_METHOD[m] == "orders"
    methods = {c.__struct_config__.tag for c in COMMANDS}
    assert set(METRIC_FOR_METHOD) <= methods
    assert methods - set(METRIC_FOR_METHOD) == {"WatchOrders", "WatchTicker"}


def test_sliding_window_exact_times():
    w = SlidingWindow(Limit(10, 10.0))
    for i in range(10):
        assert w.try_acquire(0.5 * i) == 0.0
    # the 11th at t=5.0 must wait until the first (t=0) leaves the window at t=10
    assert w.try_acquire(5.0) == pytest.approx(5.0)
    assert w.headroom(5.0) == 0
    assert w.try_acquire(10.0) == 0.0
    assert w.try_acquire(10.0) == pytest.approx(0.5)
    assert w.headroom(100.0) == 10


def test_sliding_window_never_exceeds_count_in_any_window():
    w = SlidingWindow(Limit(5, 1.0))
    taken = []
    t = 0.0
    while t < 20:
        if w.try_acquire(t) == 0.0:
            taken.append(t)
        t += 0.07
    for i in range(len(taken) - 5):
        assert taken[i + 5] - taken[i] > 1.0 - 1e-9


def test_token_bucket_refills_continuously():
    b = TokenBucket(Limit(10, 10.0))
    for _ in range(10):
        assert b.try_acquire(0.0) == 0.0
    assert b.try_acquire(0.0) == pytest.approx(1.0)
    assert b.try_acquire(0.5) == pytest.approx(0.5)
    assert b.try_acquire(1.0) == 0.0


def test_make_limiter_and_bad_limits():
    assert isinstance(make_limiter(Limit(1, 1.0)), SlidingWindow)
    assert isinstance(make_limiter(Limit(1, 1.0), "bucket"), TokenBucket)
    with pytest.raises(ValueError):
        make_limiter(Limit(1, 1.0), "leaky")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Limit(0, 1.0)
    with pytest.raises(ValueError):
        SlidingWindow(Limit(2, 1.0)).try_acquire(0.0, 3)
