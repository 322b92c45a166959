"""Benchmark: the local exchange over WebSocket on loopback, plus the core in-process figure.

``cftrade bench exchange`` prints one JSON line:

* ``ws_pipelined``: one authenticated connection pipelines PlaceOrder/CancelOrder pairs (by
  tonce) without waiting; commands per second from the first send to the last reply, and
  frames per second (replies plus the notices each command causes: BalanceChanged,
  OrderOpened, OrderClosed).
* ``ws_parallel``: the same on several connections (users) at once: aggregate commands/s.
* ``ws_roundtrip``: PlaceOrder then CancelOrder, each waiting for its reply: p50/p99/max of
  one command's round trip and of the pair, in microseconds.
* ``core``: ``benchmarks.bench_exchange_core.run_core_bench`` (the engine alone, in-process).

Client and server run in this one process (one core), so the WebSocket figures are a lower
bound for the server alone.  Rate limits are switched off for the benchmark exchange.  The
benchmark checks its answer: every command answered with error_code 0, no order left open,
the exchange's invariants hold, and the frame count equals what the engine delivered.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from typing import Any

import trio
from trio_websocket import open_websocket_url

from engine.exchange.core import Exchange
from engine.exchange.server import ExchangeServer, serve_exchange, wall_clock_us
from engine.exchange.settings import (
    DEMO_COOKIE,
    DEMO_PASSPHRASE,
    ExchangeSettings,
    LimitsSettings,
    UserSettings,
)
from engine.protocol.auth import (
    b64_nonce,
    derive_private_key,
    new_nonce,
    nonce_from_b64,
    sign,
    signed_message,
)
from engine.protocol.codec import CODEC
from engine.protocol.messages import Authenticate, CancelOrder, PlaceOrder
from engine.scale import GBP, XBT


def _settings(users: int) -> ExchangeSettings:
    return ExchangeSettings(
        users=[
            UserSettings(user_id=u, demo=True, balances={"XBT": "100000", "GBP": "1000000000.00"})
            for u in range(1, users + 1)
        ],
        limits=LimitsSettings(enabled=False),
        seed=1,
    )


def _pairs(n: int, first_tonce: int, seed: int) -> list[str]:
    """2n command texts: PlaceOrder(tonce t) then CancelOrder(tonce t), prices away from
    any other order so nothing trades (the cancel always finds its order)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = first_tonce + i
        bid = rng.random() < 0.5
        price = 1_000_000 - rng.randrange(1000) if bid else 9_000_000 + rng.randrange(1000)
        qty = rng.randrange(10_000, 1_000_000)
        out.append(CODEC.encode_text(PlaceOrder(tag=2 * t, tonce=t, base=XBT.code, counter=GBP.code,
                                                quantity=qty if bid else -qty, price=price)))
        out.append(CODEC.encode_text(CancelOrder(tag=2 * t + 1, tonce=t)))
    return out


async def _text(ws: Any) -> str:
    msg = await ws.get_message()
    if not isinstance(msg, str):
        raise AssertionError("the exchange sent a binary frame")
    return msg


async def _login(ws: Any, user_id: int) -> None:
    welcome = json.loads(await ws.get_message())
    client_nonce = new_nonce()
    key = derive_private_key(user_id, DEMO_PASSPHRASE)
    sig = sign(key, signed_message(user_id, nonce_from_b64(welcome["nonce"]), client_nonce))
    await ws.send_message(CODEC.encode_text(Authenticate(user_id=user_id, cookie=DEMO_COOKIE,
                                                         nonce=b64_nonce(client_nonce), signature=sig)))
    reply = json.loads(await ws.get_message())
    if reply != {"error_code": 0}:
        raise AssertionError(f"login failed: {reply}")


async def _pipelined(url: str, user_id: int, n_pairs: int, seed: int) -> dict[str, float]:
    """Send 2*n_pairs commands without waiting; read until every reply is in."""
    texts = _pairs(n_pairs, 1, seed)
    async with open_websocket_url(url, message_queue_size=4096, receive_buffer_size=65536) as ws:
        await _login(ws, user_id)
        frames = replies = bad = 0

        async def send_all() -> None:
            for t in texts:
                await ws.send_message(t)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            while replies < len(texts):
                msg = await _text(ws)
                frames += 1
                if '"error_code"' in msg:  # a reply (notices have no error_code)
                    replies += 1
                    if '"error_code":0' not in msg:
                        bad += 1
        elapsed = time.perf_counter() - t0
    if bad:
        raise AssertionError(f"{bad} of {replies} pipelined commands failed")
    return {"commands": len(texts), "frames": frames, "seconds": elapsed}


async def _roundtrips(url: str, user_id: int, n_pairs: int, seed: int, first_tonce: int) -> dict[str, Any]:
    texts = _pairs(n_pairs, first_tonce, seed)
    one: list[float] = []
    pair: list[float] = []
    async with open_websocket_url(url, message_queue_size=4096, receive_buffer_size=65536) as ws:
        await _login(ws, user_id)
        for i in range(0, len(texts), 2):
            t0 = time.perf_counter()
            for k in (0, 1):
                t1 = time.perf_counter()
                await ws.send_message(texts[i + k])
                while True:  # skip the notices; stop at the reply
                    msg = await _text(ws)
                    if '"error_code"' in msg:
                        break
                if '"error_code":0' not in msg:
                    raise AssertionError(f"round trip failed: {msg}")
                one.append(time.perf_counter() - t1)
            pair.append(time.perf_counter() - t0)

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6, 1)

    return {
        "pairs": n_pairs,
        "command_p50_us": pct(one, 0.50),
        "command_p99_us": pct(one, 0.99),
        "pair_p50_us": pct(pair, 0.50),
        "pair_p99_us": pct(pair, 0.99),
        "pair_max_us": pct(pair, 1.0),
        "pair_mean_us": round(statistics.fmean(pair) * 1e6, 1),
    }


async def run_ws_bench(pairs: int, roundtrips: int, connections: int, seed: int) -> dict[str, Any]:
    ex = Exchange(_settings(max(2, connections + 1)), clock_us=wall_clock_us, rng=random.Random(seed))
    async with trio.open_nursery() as nursery:
        server: ExchangeServer = await nursery.start(serve_exchange, ex)
        single = await _pipelined(server.url, 1, pairs, seed)
        results: list[dict[str, float]] = []

        async def one(uid: int) -> None:
            results.append(await _pipelined(server.url, uid, pairs // connections, seed + uid))

        t0 = time.perf_counter()
        async with trio.open_nursery() as inner:
            for uid in range(2, connections + 2):
                inner.start_soon(one, uid)
        parallel_s = time.perf_counter() - t0
        rt = await _roundtrips(server.url, 1, roundtrips, seed + 1000, first_tonce=pairs + 1)
        stats = server.statistics()
        nursery.cancel_scope.cancel()
    # The benchmark's own answer check.
    ex.check_invariants()
    for uid in ex.users:
        if ex.open_orders(uid):
            raise AssertionError(f"user {uid} has orders left open: a cancel went missing")
    total_cmds = single["commands"] + sum(r["commands"] for r in results) + 2 * roundtrips
    if stats.commands != total_cmds + 2 + connections:  # + the logins
        raise AssertionError(f"server executed {stats.commands} commands, clients sent {total_cmds}")
    par_cmds = sum(r["commands"] for r in results)
    return {
        "ws_pipelined": {
            "commands": single["commands"],
            "commands_per_s": round(single["commands"] / single["seconds"]),
            "frames_per_s": round(single["frames"] / single["seconds"]),
            "frames_per_command": round(single["frames"] / single["commands"], 2),
        },
        "ws_parallel": {
            "connections": connections,
            "commands": par_cmds,
            "commands_per_s": round(par_cmds / parallel_s),
        },
        "ws_roundtrip": rt,
        "peak_send_queue": stats.peak_send_queue,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cftrade bench exchange", description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10_000, help="place+cancel pairs pipelined (default 10000)")
    p.add_argument("--roundtrips", type=int, default=2_000, help="place+cancel pairs one at a time (default 2000)")
    p.add_argument("--connections", type=int, default=4, help="parallel connections (default 4)")
    p.add_argument("--core-ops", type=int, default=100_000, help="core benchmark commands; 0 skips it")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out: dict[str, Any] = {"bench": "exchange", "seed": args.seed}
    out.update(trio.run(run_ws_bench, args.pairs, args.roundtrips, args.connections, args.seed))
    if args.core_ops > 0:
        try:
            from benchmarks.bench_exchange_core import run_core_bench
        except ImportError:  # pragma: no cover - the core benchmark ships with the core
            out["core"] = None
        else:
            core = run_core_bench(args.core_ops, args.seed)
            out["core"] = {k: core[k] for k in ("ops", "ops_per_s", "errors", "invariants", "deterministic")}
    out["checks"] = "ok"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
