"""Shared helpers for the exchange-core tests (no tests here): a settable clock, scripted rngs, a harness
that opens sessions and records every notice each session receives."""

from __future__ import annotations

import random
from typing import Any

from engine.exchange.core import Exchange, Session
from engine.exchange.settings import ExchangeSettings, UserSettings
from engine.protocol.messages import Notice, PlaceOrder, Reply
from engine.scale import EUR, GBP, XBT

XBT_C, GBP_C, EUR_C = XBT.code, GBP.code, EUR.code


class Clock:
    """A settable microsecond clock."""

    def __init__(self, now: int = 1_700_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


class ScriptedRng(random.Random):
    """An rng whose ``randrange`` draws follow a script: True = round up, False = round down.

    Rounding up needs a draw below the remainder (0 always is); rounding down needs a draw
    at or above it (n - 1 always is).  Once the script is used up, draws come from the
    seeded generator.  ``draws`` counts the calls.
    """

    def __init__(self, script: list[bool], seed: int = 0) -> None:
        super().__init__(seed)
        self.script = list(script)
        self.draws = 0

    def randrange(self, start: int, stop: Any = None, step: int = 1) -> int:  # type: ignore[override]
        self.draws += 1
        n = start if stop is None else stop - start
        if self.script:
            return 0 if self.script.pop(0) else n - 1
        return super().randrange(start, stop, step)


def settings(
    balances: dict[int, dict[str, str]], *, api_version: int = 2, **kwargs: Any
) -> ExchangeSettings:
    users = [UserSettings(user_id=u, demo=True, balances=b) for u, b in balances.items()]
    return ExchangeSettings(users=users, api_version=api_version, **kwargs)  # type: ignore[arg-type]


class Harness:
    """An exchange plus named sessions that record their notices."""

    def __init__(self, ex_settings: ExchangeSettings, rng: random.Random | None = None, clock: Clock | None = None):
        self.clock = clock or Clock()
        self.rng = rng or random.Random(1234)
        self.ex = Exchange(ex_settings, clock_us=self.clock, rng=self.rng)
        self.inbox: dict[int, list[Notice]] = {}

    def session(self, user_id: int | None = None) -> Session:
        """A session of ``user_id`` (internal, listening) or an anonymous wire session."""
        if user_id is None:
            box: list[Notice] = []
            s = self.ex.open_session(box.append)
        else:
            box = []
            s = self.ex.open_internal_session(user_id, box.append)
        self.inbox[s.id] = box
        return s

    def notices(self, s: Session, clear: bool = True) -> list[Notice]:
        box = self.inbox[s.id]
        out = list(box)
        if clear:
            box.clear()
        return out

    def do(self, s: Session, cmd: Any) -> Reply:
        reply = self.ex.handle(s, cmd)
        self.ex.check_invariants()
        return reply

    def place(self, s: Session, quantity: int | None = None, price: int | None = None, **kw: Any) -> Reply:
        """PlaceOrder on XBT:GBP by default: limit (quantity, price), market (quantity) or
        market by ``total=``."""
        kw.setdefault("base", XBT_C)
        kw.setdefault("counter", GBP_C)
        if quantity is not None:
            kw["quantity"] = quantity
        if price is not None:
            kw["price"] = price
        return self.do(s, PlaceOrder(**kw))
