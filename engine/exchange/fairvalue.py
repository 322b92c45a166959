"""A seeded fair-value process in integer price ticks: geometric Brownian motion with jumps.

The simulated participants quote and trade around this value; it is the hidden "true price"
of the simulated market.  ::

    fv = FairValue(price=3_000_000, volatility=0.8, jump_rate_per_hour=0.5, jump_size=0.01,
                   rng=random.Random(7))
    fv.advance(1_000_000)     # one second later (microseconds)
    fv.price                  # an int in the market's price scale, always >= 1

Each step multiplies the price by ``exp(sigma * sqrt(dt) * Z - sigma**2 dt / 2)`` (zero drift
in expectation) and, with probability ``rate * dt``, by a further ``exp(J)`` with ``J`` normal
of standard deviation ``jump_size``.  The log-price is the state, kept as a float so tiny
steps accumulate instead of being rounded away tick by tick; :attr:`price` rounds it to a
whole tick.  Floats never touch money here: only the quoting agents turn this into prices,
and they use the integer :attr:`price`.
"""

from __future__ import annotations

import math
import random

SECONDS_PER_YEAR = 365.0 * 24 * 3600


class FairValue:
    """One market's hidden value; plain ``def`` state changes, deterministic under its rng."""

    __slots__ = ("_log", "_sigma_per_s", "_jump_rate_per_s", "_jump_size", "_rng", "jumps", "_min_log")

    def __init__(
        self,
        price: int,
        *,
        volatility: float,
        jump_rate_per_hour: float,
        jump_size: float,
        rng: random.Random,
        min_price: int = 1,
    ) -> None:
        if type(price) is not int or price < 1:
            raise ValueError(f"initial price must be a positive integer tick count, was {price!r}")
        if volatility < 0 or jump_rate_per_hour < 0 or jump_size < 0:
            raise ValueError("volatility, jump_rate_per_hour and jump_size must be >= 0")
        self._log = math.log(price)
        self._min_log = math.log(max(min_price, 1))
        self._sigma_per_s = volatility / math.sqrt(SECONDS_PER_YEAR)
        self._jump_rate_per_s = jump_rate_per_hour / 3600.0
        self._jump_size = jump_size
        self._rng = rng
        self.jumps = 0

    @property
    def price(self) -> int:
        """The fair value in whole price ticks (never below 1)."""
        return max(1, round(math.exp(self._log)))

    def advance(self, dt_us: int) -> int:
        """Move the process forward by ``dt_us`` microseconds; returns the new :attr:`price`."""
        if dt_us <= 0:
            return self.price
        dt = dt_us / 1_000_000
        rng = self._rng
        sigma = self._sigma_per_s
        step = sigma * math.sqrt(dt) * rng.gauss(0.0, 1.0) - 0.5 * sigma * sigma * dt
        if self._jump_rate_per_s > 0 and rng.random() < self._jump_rate_per_s * dt:
            step += rng.gauss(0.0, self._jump_size)
            self.jumps += 1
        self._log = max(self._min_log, self._log + step)
        return self.price

    def state(self) -> dict[str, float | int]:
        """JSON-able state (for reports; the rng state is not included)."""
        return {"log_price": self._log, "price": self.price, "jumps": self.jumps}
