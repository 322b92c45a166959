"""The seeded fair-value process behind the simulated market (engine/exchange/fairvalue.py)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from engine.exchange.fairvalue import SECONDS_PER_YEAR, FairValue


def _path(seed: int, n: int = 500, **kw: float) -> list[int]:
    params = {"volatility": 0.8, "jump_rate_per_hour": 2.0, "jump_size": 0.01, **kw}
    fv = FairValue(3_000_000, rng=random.Random(seed), **params)  # type: ignore[arg-type]
    return [fv.advance(1_000_000) for _ in range(n)]


def test_same_seed_same_path_other_seed_other_path() -> None:
    assert _path(5) == _path(5)
    assert _path(5) != _path(6)


def test_prices_are_positive_integer_ticks() -> None:
    path = _path(1, n=2000, volatility=50.0, jump_size=0.5)
    assert all(type(p) is int and p >= 1 for p in path)


def test_no_volatility_no_jumps_means_constant_price() -> None:
    assert set(_path(3, volatility=0.0, jump_rate_per_hour=0.0)) == {3_000_000}


def test_step_volatility_matches_annualised_parameter() -> None:
    # 20,000 one-second steps without jumps: the sample stdev of log returns must be
    # sigma*sqrt(dt) within 3% (the standard error of a stdev is about 1/sqrt(2n) = 0.5%).
    fv = FairValue(3_000_000, volatility=0.8, jump_rate_per_hour=0.0, jump_size=0.0, rng=random.Random(11))
    logs = [float(fv.state()["log_price"])]
    for _ in range(20_000):
        fv.advance(1_000_000)
        logs.append(float(fv.state()["log_price"]))
    returns = [b - a for a, b in zip(logs, logs[1:], strict=False)]
    expected = 0.8 / math.sqrt(SECONDS_PER_YEAR)
    assert statistics.pstdev(returns) == pytest.approx(expected, rel=0.03)
    # Zero drift in expectation: the mean log return is -sigma^2/2 per second, tiny.
    assert abs(statistics.fmean(returns)) < 4 * expected / math.sqrt(len(returns))


def test_jump_rate() -> None:
    # 1 jump per second on average with 0.1 s steps: about 10% of 10,000 steps jump.
    fv = FairValue(3_000_000, volatility=0.0, jump_rate_per_hour=3600.0, jump_size=0.001, rng=random.Random(2))
    for _ in range(10_000):
        fv.advance(100_000)
    assert 900 <= fv.jumps <= 1100  # mean 1000, sd 30


def test_zero_time_step_changes_nothing() -> None:
    fv = FairValue(12345, volatility=1.0, jump_rate_per_hour=0.0, jump_size=0.0, rng=random.Random(0))
    assert fv.advance(0) == 12345
    assert fv.advance(-5) == 12345


@pytest.mark.parametrize(
    ("price", "kw", "match"),
    [
        (0, {}, "positive integer"),
        (1.5, {}, "positive integer"),
        (100, {"volatility": -0.1}, ">= 0"),
        (100, {"jump_size": -1.0}, ">= 0"),
    ],
)
def test_bad_parameters_are_refused(price: object, kw: dict[str, float], match: str) -> None:
    params = {"volatility": 0.5, "jump_rate_per_hour": 0.0, "jump_size": 0.0, **kw}
    with pytest.raises(ValueError, match=match):
        FairValue(price, rng=random.Random(0), **params)  # type: ignore[arg-type]
