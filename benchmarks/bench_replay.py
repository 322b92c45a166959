"""``cftrade bench replay``: backtest replay throughput with the shipped market maker.

A seeded recording of ``--events`` lines (default 1,000,000) is made by the generator
(:mod:`backtests.generate`, the demo market of configs/exchange.yaml, in a child process so
its memory is not counted, cached as columnar ``.npz`` under ``--cache``) unless ``--data``
names one.  This process then loads it and replays it through configs/market_maker.yaml
(:func:`backtests.replay.run_backtest`: the real TradingCore, risk governor and exchange core).

Figures: recorded events per second of the replay (every line of the recording counts, as
in the issue's goal), the load time apart, the peak resident memory of this process and its
growth over the replay.  Baselines are the issue's figures for comparable 1 M-event L3
replays on this machine class (not re-measured here: neither package is a dependency):
hftbacktest with a numba one-bid-one-ask quoter 1.7 M/s, NautilusTrader's backtest engine
0.03 M/s.  The goal is >= 2 M events/s.

``--fast`` replays with :class:`backtests.fast.FastReplay` (its kernels are compiled, or
loaded from numba's cache, before the timing); ``--busy`` uses a recording of the busy market
(configs/exchange_busy.yaml, ~245 recorded events per second of market time, the density of an
active real L3 stream; the demo market has ~7); ``--book-interval S`` sets every strategy's
``on_book`` conflation (hftbacktest's quoter acts on an ``elapse()`` interval: a conflated
market maker is the comparable setting); ``--exact-events N`` also times the exact path on the
first N book events (0: all) in the same process, for the ratio.  ``--config
benchmarks/watch_only.yaml --check-events 0`` measures the floor: a strategy that only watches.

``--scaling`` measures the sweep instead: the example sweep
(backtests/scenarios/mm_calm/sweep.yaml, 20 replays) on a process pool of 1 and of N workers,
best of ``--repeat``; scaling efficiency = T(1) / (N x T(N)).  Its check: both pools give the
same runs (the same ``final_hash`` per run).

The benchmark checks its answer: every recorded event is counted, the report's fills and
volume equal the runtime's own summary, the strategy's balance view equals the exchange
core's at the end, and a replay of the first ``--check-events`` events twice gives the same
``final_hash`` (S2).  Output: one JSON line; exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "market_maker.yaml"
BUSY_EXCHANGE = ROOT / "configs" / "exchange_busy.yaml"
GOAL = 2_000_000
BASELINES = {"hftbacktest_numba_quoter": 1_700_000, "nautilus_trader": 30_000}


def _rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: the peak is the best we have
        return _rss_mib()


def ensure_data(events: int, seed: int, cache: Path, busy: bool = False) -> tuple[Path, float | None]:
    """The cached recording of ``events`` lines for ``seed``, generated (in a child) if absent;
    ``busy``: of the busy market (configs/exchange_busy.yaml) instead of the demo one."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / (f"replay-busy-{events}-{seed}.npz" if busy else f"replay-{events}-{seed}.npz")
    if path.exists():
        return path, None
    t0 = time.perf_counter()
    tmp = path.with_suffix(".tmp.npz")
    extra = ["--config", str(BUSY_EXCHANGE)] if busy else []
    subprocess.run([sys.executable, "-m", "backtests.generate", "--events", str(events), "--seed", str(seed),
                    "--out", str(tmp), *extra], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    tmp.replace(path)
    return path, time.perf_counter() - t0


def load_config(config: Path, book_interval: float | None) -> Any:
    """The run config, with every strategy's ``book_interval`` (on_book conflation) replaced."""
    import msgspec

    from engine.config import load_run_config

    cfg = load_run_config(str(config), resolve_secrets=False)
    if book_interval is None:
        return cfg
    strategies = [msgspec.structs.replace(s, params=msgspec.structs.replace(s.params, book_interval=book_interval))
                  for s in cfg.strategies]
    return msgspec.structs.replace(cfg, strategies=strategies)


def warm_up(cfg: Any, rd: Any) -> None:
    """Compile (or load from numba's cache) the fast path's kernels outside the timing."""
    from backtests.fast import FastReplay
    from backtests.replay import ReplayOptions

    if len(rd.events) > 1:
        FastReplay(cfg, rd, ReplayOptions(end_us=int(rd.events["recv_time"][min(1000, len(rd.events) - 1)]))).run()


def run(data: Path, config: Path, seed: int, check_events: int, *, fast: bool = False,
        book_interval: float | None = None, exact_events: int | None = None) -> dict[str, Any]:
    from backtests.replay import ReplayOptions, load_recording, run_backtest
    from backtests.report import build_report

    cfg = load_config(config, book_interval)
    rss0 = _current_rss_mib()
    t0 = time.perf_counter()
    rd = load_recording(data)
    load_s = time.perf_counter() - t0
    rss_loaded = _current_rss_mib()
    rss_load_peak = _rss_mib()  # decompressing the npz peaks well above what stays resident
    if fast:
        warm_up(cfg, rd)
    result = run_backtest(cfg, rd, ReplayOptions(seed=seed), fast=fast)
    # ru_maxrss and /proc's current RSS count slightly differently: when this process peaked
    # before (a test run), the peak could read a few hundred KiB below the start.
    rss_peak = max(_rss_mib(), rss0, rss_loaded)
    rss_after_replay = _current_rss_mib()
    report = build_report(result)
    name = result.strategies[0]
    m = report.strategies[name]
    core = result.summary["strategies"][name]
    checks = {
        "all_events_counted": result.events == rd.total_events,
        "report_matches_runtime": m.fills == core["trades"] and m.volume_base == core["volume_base"],
        "balances_match_exchange": result.summary["replay"]["balance_view_mismatch"] == {},
    }
    # S2 on a prefix: two replays of the first check_events book events, one hash
    if check_events > 0 and len(rd.events):
        end = int(rd.events["recv_time"][min(check_events, len(rd.events)) - 1])
        a = run_backtest(cfg, rd, ReplayOptions(seed=seed, end_us=end), fast=fast)
        b = run_backtest(cfg, rd, ReplayOptions(seed=seed, end_us=end), fast=fast)
        checks["deterministic_prefix"] = a.final_hash == b.final_hash and len(a.fills) > 0
    eps = result.events / result.wall_seconds
    exact: dict[str, Any] | None = None
    if exact_events is not None:
        # The exact path in the same run, on the first ``exact_events`` book events (0: all).
        n = len(rd.events) if exact_events <= 0 else min(exact_events, len(rd.events))
        end_ex = None if n == len(rd.events) else int(rd.events["recv_time"][n - 1])
        ex = run_backtest(cfg, rd, ReplayOptions(seed=seed, end_us=end_ex))
        exact = {"events": ex.events, "replay_s": round(ex.wall_seconds, 3),
                 "events_per_s": round(ex.events / ex.wall_seconds), "fills": len(ex.fills),
                 "fast_speedup": round(eps / (ex.events / ex.wall_seconds), 1)}
    virtual_s = result.summary["replay"]["virtual_seconds"]
    stats = result.summary["replay"]
    return {
        "bench": "replay",
        "mode": "fast" if fast else "exact",
        "data": str(data),
        "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
        "book_interval_s": book_interval,
        "events": result.events,
        "events_per_virtual_s": round(result.events / virtual_s, 1) if virtual_s > 0 else None,
        "book_events": int(len(rd.events)),
        "virtual_hours": round(result.summary["replay"]["virtual_seconds"] / 3600, 3),
        "load_s": round(load_s, 3),
        "replay_s": round(result.wall_seconds, 3),
        "events_per_s": round(eps),
        "load_and_replay_events_per_s": round(result.events / (load_s + result.wall_seconds)),
        "goal_events_per_s": GOAL,
        "goal_ratio": round(eps / GOAL, 4),
        "vs_baselines": {k: round(eps / v, 4) for k, v in BASELINES.items()},
        "fills": m.fills,
        "orders_placed": m.orders_placed,
        "hooks": sum(v.get("hooks", 0) for v in result.summary["strategies"].values()),
        "fast_interactions": stats.get("interactions"),
        "fast_batches": stats.get("batches"),
        "exact_same_run": exact,
        "net_pnl": m.to_dict()["net_pnl"],
        "final_hash": result.final_hash,
        "rss_start_mib": round(rss0, 1),
        "rss_after_load_mib": round(rss_loaded, 1),
        "rss_peak_mib": round(rss_peak, 1),
        "rss_peak_during_load_mib": round(rss_load_peak, 1),
        "rss_after_replay_mib": round(rss_after_replay, 1),
        "checks": checks,
        "checks_ok": all(checks.values()),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def scaling(workers: int, repeat: int, sweep: Path) -> dict[str, Any]:
    """Wall time of the same sweep on 1 and on ``workers`` local processes (best of ``repeat``)."""
    from backtests.sweep import GeneratedRecording, load_sweep, run_sweep

    spec = load_sweep(sweep)
    data_dir = Path(tempfile.gettempdir()) / "cftrade-sweep-data"
    for rec in spec.recordings:  # make the generated recordings first, untimed
        if isinstance(rec, GeneratedRecording):
            rec.make(data_dir)
    best: dict[int, float] = {}
    hashes: dict[int, list[str]] = {}
    task_s: dict[int, float] = {}
    for _ in range(repeat):
        for w in (1, workers):
            res = run_sweep(spec, workers=w, data_dir=data_dir)
            if res.wall_seconds < best.get(w, float("inf")):
                best[w] = res.wall_seconds
                task_s[w] = sum(r["seconds"] for r in res.runs)
            hashes[w] = [r.get("final_hash") or "" for r in res.runs]
    runs = len(hashes[1])
    return {
        "bench": "replay-sweep-scaling",
        "sweep": str(sweep.relative_to(ROOT)) if sweep.is_relative_to(ROOT) else str(sweep),
        "runs": runs,
        "workers": workers,
        "wall_s_1": round(best[1], 2),
        f"wall_s_{workers}": round(best[workers], 2),
        "speedup": round(best[1] / best[workers], 3),
        "efficiency": round(best[1] / (workers * best[workers]), 3),
        "task_s_sum_1": round(task_s[1], 2),
        f"task_s_sum_{workers}": round(task_s[workers], 2),
        "checks": {"same_runs": hashes[1] == hashes[workers] and all(hashes[1])},
        "checks_ok": hashes[1] == hashes[workers] and all(hashes[1]),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cftrade bench replay", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="recording lines to generate (default 1000000)")
    ap.add_argument("--seed", type=int, default=1, help="generator and replay seed (default 1)")
    ap.add_argument("--data", type=Path, help="replay this recording instead of generating one")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config (default configs/market_maker.yaml)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cftrade-bench",
                    help="where generated recordings are kept between runs")
    ap.add_argument("--check-events", type=int, default=20_000,
                    help="replay this many events twice to check determinism (0: skip)")
    ap.add_argument("--fast", action="store_true", help="the fast replay (backtests/fast.py) instead of the exact one")
    ap.add_argument("--busy", action="store_true",
                    help="a recording of the busy market (configs/exchange_busy.yaml, ~240 events/s) instead of the demo")
    ap.add_argument("--book-interval", type=float, metavar="S",
                    help="set every strategy's book_interval (on_book conflation, seconds; 0: every change)")
    ap.add_argument("--exact-events", type=int, metavar="N",
                    help="also time the exact path on the first N book events in the same run (0: all)")
    ap.add_argument("--scaling", action="store_true", help="measure sweep scaling on 1 vs --workers processes")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool size for --scaling (default: CPUs)")
    ap.add_argument("--repeat", type=int, default=3, help="--scaling: best of N (default 3)")
    ap.add_argument("--sweep", type=Path, default=ROOT / "backtests" / "scenarios" / "mm_calm" / "sweep.yaml",
                    help="--scaling: the sweep to run (default: the mm_calm example)")
    args = ap.parse_args(argv)
    if args.scaling:
        sc = scaling(max(2, args.workers), args.repeat, args.sweep.resolve())
        print(json.dumps(sc))
        return 0 if sc["checks_ok"] else 1
    gen_s = None
    data = args.data
    if data is None:
        data, gen_s = ensure_data(args.events, args.seed, args.cache, busy=args.busy)
    res = run(data, args.config.resolve(), args.seed, args.check_events, fast=args.fast,
              book_interval=args.book_interval, exact_events=args.exact_events)
    if gen_s is not None:
        res["generate_s"] = round(gen_s, 1)
    print(json.dumps(res))
    return 0 if res["checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
