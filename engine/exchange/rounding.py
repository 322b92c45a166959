"""Exact integer arithmetic of trades: stochastic rounding and what a reservation can buy.

Stochastic rounding (IMPL-GUIDE): a real ``num / den`` rounds up with probability equal to
its fractional part.  With integers only::

    q, r = divmod(num, den)          # fractional part is r / den
    up = rng.randrange(den) < r      # exactly r of the den equally likely draws round up

The rng is consumed only when ``r != 0``: an exact value costs no draw, so two engines fed
the same seed stay in step whatever their amounts are.  The expected value of the result
is exactly ``num / den``, which makes the rounding fair in the long run (RELIABILITY S3).

Whichever way a total or fee rounds, money is conserved: the buyer pays ``total + fee_b``,
the seller receives ``total - fee_a`` and the exchange keeps ``fee_b + fee_a``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

PPM = 1_000_000


def stochastic_round(num: int, den: int, rng: random.Random) -> int:
    """Round ``num / den`` (num >= 0, den > 0) up with probability equal to its fraction."""
    q, r = divmod(num, den)
    if r and rng.randrange(den) < r:
        q += 1
    return q


def max_cost_before_fee(budget: int, fee_ppm: int) -> int:
    """The largest total ``t`` whose worst-case fee still fits: ``t + ceil(t*ppm/1e6) <= budget``.

    ``t + ceil(t*r) == ceil(t*(1+r))`` for an integer t, so the condition is
    ``t * (1e6 + ppm) <= budget * 1e6``.
    """
    if budget <= 0:
        return 0
    return (budget * PPM) // (PPM + fee_ppm)


def affordable_quantity(budget: int, price: int, mul: int, den: int, fee_ppm: int) -> int:
    """The largest base quantity a buyer can take at ``price`` with ``budget`` counter units,
    paying the total and the fee even if both round up.

    ``ceil(x*p*mul/den) <= t_max  <=>  x*p*mul <= t_max*den``.
    """
    t_max = max_cost_before_fee(budget, fee_ppm)
    return (t_max * den) // (price * mul)


def make_below(rng: random.Random) -> Callable[[int], int]:
    """A fast ``n -> rng.randrange(n)`` for the engine's hot path, same draws as randrange.

    For a plain ``random.Random`` (or any subclass that keeps its ``randrange`` and
    ``_randbelow``), ``randrange(n)`` is rejection sampling over ``getrandbits(n.bit_length())``;
    doing that directly skips randrange's argument handling (about 2x faster).  Any other
    rng (a scripted test rng, say) is called through ``randrange`` as is.
    """
    cls = type(rng)
    plain = cls.randrange is random.Random.randrange and getattr(cls, "_randbelow", None) is getattr(
        random.Random, "_randbelow_with_getrandbits", object()
    )
    if not plain:
        return rng.randrange
    getrandbits = rng.getrandbits

    def below(n: int) -> int:
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return r

    return below
