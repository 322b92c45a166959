"""Benchmark: the exchange core in-process (place + cancel + match with full accounting).

``run_core_bench(n_ops, seed)`` builds an exchange with 100 users, pre-generates a seeded
command stream (so the timing covers the engine only), runs it through
:meth:`Exchange.handle` on internal sessions, and then checks its own answer: every book
and accounting invariant (conservation per asset, reservations, uncrossed book) and a
second run from the same seed must reach the same state hash.

The mix, per command: 45% limit orders priced around a fixed mid (about a third of them
cross and trade), 45% cancels by tonce of the same user's oldest order (some have filled
already and answer error 1, as in real flow), 10% market orders by quantity or total.  ``cftrade bench exchange`` reaches :func:`main` (one JSON line on stdout).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections import deque
from typing import Any

from engine.exchange.core import Exchange, Session
from engine.exchange.settings import ExchangeSettings, LimitsSettings, UserSettings
from engine.protocol.messages import CancelOrder, Command, ErrorReply, PlaceOrder
from engine.scale import GBP, XBT

N_USERS = 100
MID = 2_500_000  # 25,000.00 GBP per XBT
SPREAD_TICKS = 400


def _settings(n_users: int) -> ExchangeSettings:
    users = [
        UserSettings(user_id=u, balances={"GBP": "100000000.00", "XBT": "100000"})
        for u in range(1, n_users + 1)
    ]
    return ExchangeSettings(
        users=users,
        limits=LimitsSettings(enabled=False),
        markets=[ExchangeSettings().markets[0]],
    )


def _workload(n_ops: int, seed: int, n_users: int) -> list[tuple[int, Command]]:
    """A seeded command stream.  Each user cancels its oldest limit orders first (as a
    market maker refreshing quotes does), so the book stays a realistic size however long
    the run; a cancel of an order that has filled meanwhile answers error 1."""
    rng = random.Random(seed)
    base, counter = XBT.code, GBP.code
    next_tonce = [0] * (n_users + 1)
    live: list[deque[int]] = [deque() for _ in range(n_users + 1)]
    out: list[tuple[int, Command]] = []
    for _ in range(n_ops):
        u = rng.randrange(1, n_users + 1)
        r = rng.random()
        if r < 0.45 or not live[u]:
            next_tonce[u] += 1
            q = rng.randrange(100_000, 50_000_000)  # 0.001 .. 0.5 XBT
            side = rng.random() < 0.5
            # bids from mid-spread/3 downwards, asks from mid+spread/3 upwards: about a
            # third of the orders cross the other side and trade
            off = rng.randrange(-SPREAD_TICKS // 3, SPREAD_TICKS)
            price = MID - off if side else MID + off
            live[u].append(next_tonce[u])
            out.append(
                (u, PlaceOrder(tonce=next_tonce[u], base=base, counter=counter, quantity=q if side else -q, price=price))
            )
        elif r < 0.90:
            out.append((u, CancelOrder(tonce=live[u].popleft())))
        else:
            next_tonce[u] += 1
            sign = 1 if rng.random() < 0.5 else -1
            if rng.random() < 0.5:
                cmd = PlaceOrder(tonce=next_tonce[u], base=base, counter=counter, quantity=sign * rng.randrange(100_000, 20_000_000))
            else:
                cmd = PlaceOrder(tonce=next_tonce[u], base=base, counter=counter, total=sign * rng.randrange(1_000, 500_000))
            out.append((u, cmd))
    return out


def _run(n_ops: int, seed: int, n_users: int = N_USERS) -> tuple[Exchange, float, dict[str, Any]]:
    clock = [1_700_000_000_000_000]
    ex = Exchange(_settings(n_users), clock_us=lambda: clock[0], rng=random.Random(seed), credentials={})
    sessions: list[Session | None] = [None] + [ex.open_internal_session(u) for u in range(1, n_users + 1)]
    work = [(sessions[u], cmd) for u, cmd in _workload(n_ops, seed, n_users)]
    handle = ex.handle
    errors = 0
    # The pre-generated stream is a million tracked objects that the cycle collector
    # would rescan again and again; freeze it (bench scaffolding, not engine state).
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for s, cmd in work:
        if type(handle(s, cmd)) is ErrorReply:  # type: ignore[arg-type]
            errors += 1
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    gc.unfreeze()
    return ex, elapsed, {"errors": errors, "cpu": cpu}


def run_core_bench(n_ops: int = 200_000, seed: int = 1) -> dict[str, Any]:
    """Run the core benchmark and verify it; returns figures (ops/s) and the checks."""
    ex, elapsed, counts = _run(n_ops, seed)
    ex.check_invariants()  # conservation, reservations, uncrossed book, priority
    h1 = ex.state_hash()
    # Determinism: a second run from the same seed must reach the same state.
    n_check = min(n_ops, 20_000)
    ex_a, _, _ = _run(n_check, seed)
    ex_b, _, _ = _run(n_check, seed)
    if ex_a.state_hash() != ex_b.state_hash():
        raise AssertionError("two runs from the same seed reached different states")
    book_bids, book_asks = ex.book(XBT.code, GBP.code)
    fees = ex.fees_collected()
    return {
        "bench": "exchange_core",
        "ops": n_ops,
        "seed": seed,
        "seconds": round(elapsed, 4),
        "ops_per_s": round(n_ops / elapsed),
        "cpu_seconds": round(counts["cpu"], 4),
        "ops_per_cpu_s": round(n_ops / counts["cpu"]),
        "errors": counts["errors"],
        "resting_bids": len(book_bids),
        "resting_asks": len(book_asks),
        "fees_gbp": fees[GBP.code],
        "invariants": "ok",
        "deterministic": True,
        "state_hash": h1[:16],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cftrade bench exchange-core", description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=200_000, help="commands to run (default 200000)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    print(json.dumps(run_core_bench(args.ops, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
