"""``cftrade bench codec``: decode throughput of L3 notices, against stdlib json in the same run.

A seeded stream of OrderOpened / OrdersMatched / OrderClosed texts (one JSON text per
message, as they arrive from the exchange) is decoded three ways:

* ``codec``  - ``CODEC.decode_server_frame`` (what the client runs: typed, validated structs)
* ``json``   - ``json.loads`` of the same texts (dicts, no validation): the baseline
* ``orjson`` - ``orjson.loads`` if installed (dicts, no validation)

The benchmark checks its answer: the sum of ids, quantities and prices decoded by the codec
must equal the sum from json.loads.  Output: one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from engine.protocol.codec import CODEC
from engine.protocol.messages import UNSET, OrderClosed, OrderOpened, OrdersMatched

XBT, GBP = 0xF800, 0xFA20


def generate(n: int, seed: int) -> list[str]:
    """``n`` notice texts with a realistic L3 mix, including own-order (tonce/fee) variants."""
    rnd = random.Random(seed)
    out: list[str] = []
    next_id = 10_000_000
    live: list[tuple[int, int, int]] = []
    t = 1_700_000_000_000_000
    for _ in range(n):
        t += rnd.randrange(1, 5000)
        r = rnd.random()
        own = rnd.random() < 0.05
        if r < 0.45 or len(live) < 100:
            next_id += rnd.randrange(1, 4)
            side = 1 if rnd.random() < 0.5 else -1
            price = 4_500_000 + side * -rnd.randrange(1, 2000)
            qty = side * rnd.randrange(1, 5 * 10**8)
            live.append((next_id, qty, price))
            msg: OrderOpened | OrderClosed | OrdersMatched = OrderOpened(
                id=next_id, tonce=next_id if own else UNSET,
                base=XBT, counter=GBP, quantity=qty, price=price, time=t,
            )
        elif r < 0.85:
            oid, qty, price = live.pop(rnd.randrange(len(live)))
            msg = OrderClosed(id=oid, base=XBT, counter=GBP, quantity=qty, price=price)
        else:
            oid, qty, price = live[rnd.randrange(len(live))]
            traded = rnd.randrange(1, 10**8)
            kw: dict[str, Any] = {"bid_tonce": None, "bid_base_fee": 0, "bid_counter_fee": 12} if own else {}
            msg = OrdersMatched(
                bid=oid, ask=oid + 1, base=XBT, counter=GBP, quantity=traded, price=price,
                total=traded * price // 10**8, bid_rem=abs(qty), ask_rem=rnd.randrange(0, 10**8), time=t, **kw,
            )
        out.append(CODEC.encode(msg).decode("utf-8"))
    return out


def _time(fn: Callable[[str], object], texts: list[str], repeat: int) -> tuple[float, list[object]]:
    best = float("inf")
    result: list[object] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = [fn(s) for s in texts]
        best = min(best, time.perf_counter() - t0)
    return best, result


def _checksum_structs(msgs: list[object]) -> int:
    s = 0
    for m in msgs:
        if isinstance(m, OrderOpened):
            s += m.id + m.quantity + m.price
        elif isinstance(m, OrderClosed):
            s += m.id + m.quantity + m.price
        elif isinstance(m, OrdersMatched):
            s += m.quantity + m.price + m.total
    return s


def _checksum_dicts(msgs: list[object]) -> int:
    s = 0
    for m in msgs:
        assert isinstance(m, dict)
        if m["notice"] == "OrdersMatched":
            s += m["quantity"] + m["price"] + m["total"]
        else:
            s += m["id"] + m["quantity"] + m["price"]
    return s


def run(n: int, seed: int, repeat: int) -> dict[str, object]:
    texts = generate(n, seed)
    res: dict[str, object] = {"bench": "codec", "notices": n, "seed": seed}
    t_codec, decoded = _time(CODEC.decode_server_frame, texts, repeat)
    t_json, dicts = _time(json.loads, texts, repeat)
    ok = _checksum_structs(decoded) == _checksum_dicts(dicts)
    res["codec_per_s"] = round(n / t_codec)
    res["json_loads_per_s"] = round(n / t_json)
    res["ratio_vs_json"] = round(t_json / t_codec, 2)
    try:
        import orjson

        t_or, _ = _time(orjson.loads, texts, repeat)
        res["orjson_loads_per_s"] = round(n / t_or)
        res["ratio_vs_orjson"] = round(t_or / t_codec, 2)
    except ImportError:
        pass
    res["checksum_ok"] = ok
    res["goal_per_s"] = 1_500_000
    res["machine"] = f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cftrade bench codec", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500_000, help="number of notices (default 500000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    args = ap.parse_args(argv)
    res = run(args.n, args.seed, args.repeat)
    print(json.dumps(res))
    return 0 if res["checksum_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
