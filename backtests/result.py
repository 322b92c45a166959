"""What a backtest produced: the strategy's fills, equity marks, the final summary and a hash.

:class:`BacktestResult` is the one object the replay engine (:mod:`backtests.replay`) hands to
everything downstream: reports, plots, sweeps, the parity diff and the benchmark.  Money is in
scaled integers (SCALE.md) throughout; floats appear only in ``summary`` figures meant for
people (rates, seconds).

``final_hash`` is the S2 determinism witness: a sha256 over every fill (in order) and the final
balances and positions.  The same recording, config and seed must give the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MARK_DTYPE", "BacktestResult", "FillRecord", "final_hash"]

MARK_DTYPE = np.dtype(
    [
        ("time_us", np.int64),
        ("strategy", np.int32),  # index into BacktestResult.strategies
        ("position", np.int64),  # base units, signed
        ("equity", np.int64),  # counter units: realized + unrealized - fees, floored
        ("mid", np.int64),  # scaled price used for the mark (0 if the book had no mid)
    ]
)
"""One equity sample of one strategy (taken at every fill and every ``mark_interval_us``)."""


@dataclass(frozen=True, slots=True)
class FillRecord:
    """One fill of one of the strategy's orders, exactly as the exchange core charged it.

    ``side`` is +1 (buy) or -1 (sell); ``price`` is the scaled trade price, ``quantity`` base
    units, ``total`` the (stochastically rounded) counter amount that moved and ``fee`` the
    counter fee the strategy paid on this fill.  ``time_us`` is the virtual exchange time.
    """

    strategy: str
    ref: int
    side: int
    price: int
    quantity: int
    total: int
    fee: int
    time_us: int

    def as_row(self) -> tuple[str, int, int, int, int, int, int, int]:
        return (self.strategy, self.ref, self.side, self.price, self.quantity, self.total, self.fee, self.time_us)


CSV_HEADER = ("strategy", "ref", "side", "price", "quantity", "total", "fee", "time_us")


def final_hash(fills: Iterable[FillRecord], final_state: Mapping[str, Any]) -> str:
    """sha256 over the fills in order and the (JSON-able, int-valued) final state.

    Keys are sorted, so dict construction order does not matter; fill order does.
    """
    h = hashlib.sha256()
    for f in fills:
        h.update(repr(f.as_row()).encode())
        h.update(b"\n")
    h.update(json.dumps(final_state, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


@dataclass
class BacktestResult:
    """The outcome of one replay (see the module docstring).

    * ``fills``: every own fill, in the order the strategy saw them.
    * ``marks``: a :data:`MARK_DTYPE` array, sorted by time (ties keep strategy order).
    * ``strategies``: strategy names; ``marks["strategy"]`` indexes this list.
    * ``summary``: ``TradingCore.summary()`` at the end plus replay statistics under
      ``summary["replay"]`` (events, orders sent, latencies, ...).
    * ``final_state``: the integer state hashed into ``final_hash`` (balances, positions).
    """

    config_path: str
    data_path: str
    seed: int
    fills: list[FillRecord]
    marks: np.ndarray
    strategies: list[str]
    summary: dict[str, Any]
    events: int
    wall_seconds: float
    final_hash: str
    final_state: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def fills_for(self, strategy: str) -> list[FillRecord]:
        return [f for f in self.fills if f.strategy == strategy]

    def marks_for(self, strategy: str) -> np.ndarray:
        idx = self.strategies.index(strategy)
        return self.marks[self.marks["strategy"] == idx]

    def fills_csv(self) -> str:
        """The fills as CSV text (header + one line per fill, scaled integers)."""
        lines = [",".join(CSV_HEADER)]
        lines.extend(",".join(str(v) for v in f.as_row()) for f in self.fills)
        return "\n".join(lines) + "\n"
