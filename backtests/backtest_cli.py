"""``cftrade backtest CONFIG --data FILE [--out DIR]``: replay a recording through strategies.

::

    cftrade backtest configs/market_maker.yaml --data recordings/day.jsonl --out out/day
    cftrade backtest configs/market_maker.yaml --data day.npz --seed 7 --order-latency-us 2000
    cftrade backtest configs/market_maker.yaml --data day.npz --fast      # backtests/fast.py

The recording (JSONL or ``.npz``, docs/RECORDING.md) is replayed into the exchange core with
the config's strategies driven exactly as ``cftrade run`` drives them (backtests/replay.py
explains how).  Prints a summary table on stdout and one JSON line with the key figures
(``final_hash`` is the S2 determinism witness: same data, config and seed, same hash).  With
``--out`` it writes summary.json, fills.csv, the plots and report.html there.  A progress
bar goes to stderr when it is a terminal (or with ``--progress``).

Exit status: 0 after a replay, 2 on a bad config, recording or option.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engine.errors import CoinfloorError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cftrade backtest", description="Replay a recording through the strategies of a config.")
    p.add_argument("config", help="run config (YAML), as for cftrade run")
    p.add_argument("--data", required=True, type=Path, help="recording: JSONL or .npz (docs/RECORDING.md)")
    p.add_argument("--out", type=Path, help="write summary.json, fills.csv, plots and report.html here")
    p.add_argument("--seed", type=int, help="stochastic-rounding seed (default: the config's run.seed)")
    p.add_argument("--order-latency-us", type=int, default=0, help="strategy -> exchange latency (µs, default 0)")
    p.add_argument("--feed-latency-us", type=int, default=0, help="exchange -> strategy latency (µs, default 0)")
    p.add_argument("--start-us", type=int, help="the strategy starts at this recording time (µs)")
    p.add_argument("--end-us", type=int, help="the replay stops at this recording time (µs)")
    p.add_argument("--mark-interval", type=float, default=1.0, help="equity sampling interval, seconds (default 1)")
    p.add_argument("--interval", default="1h", help="Sharpe/Sortino interval of the report (default 1h)")
    p.add_argument("--exchange-config", help="exchange YAML for balances and fees (default: the config's)")
    p.add_argument("--no-plots", action="store_true", help="with --out: no PNG plots and no report.html")
    p.add_argument("--fast", action="store_true",
                   help="the fast replay (backtests/fast.py): compiled book batches, feed latency 0, no tickers")
    p.add_argument("--rounding", choices=["shared", "strategy"],
                   help="stochastic-rounding streams (default: shared; --fast: strategy)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None, help="progress bar on stderr")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def key_figures(result: Any) -> dict[str, Any]:
    """The one-line JSON of a backtest: identity, hash and the figures a sweep would rank."""
    s = result.summary
    return {
        "config": result.config_path,
        "data": result.data_path,
        "seed": result.seed,
        "final_hash": result.final_hash,
        "events": result.events,
        "mode": s.get("replay", {}).get("mode", "exact"),
        "wall_seconds": round(result.wall_seconds, 4),
        "events_per_second": round(result.events_per_second) if result.wall_seconds > 0 else None,
        "fills": len(result.fills),
        "strategies": {
            name: {k: v.get(k) for k in ("state", "net_pnl", "realized_pnl", "unrealized_pnl", "fees", "trades",
                                         "orders_placed", "position")}
            for name, v in (s.get("strategies") or {}).items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from backtests.replay import ReplayOptions, load_recording, run_backtest
    from engine.config import load_run_config

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        if not args.mark_interval > 0:
            raise CoinfloorError(f"--mark-interval must be > 0 seconds, was {args.mark_interval}")
        config = load_run_config(args.config, resolve_secrets=False)
        opts = ReplayOptions(
            seed=args.seed, order_latency_us=args.order_latency_us, feed_latency_us=args.feed_latency_us,
            mark_interval_us=max(1, int(args.mark_interval * 1e6)), start_us=args.start_us, end_us=args.end_us,
            exchange_config=args.exchange_config, progress=progress, rounding=args.rounding,
        )
        data = load_recording(args.data)
        result = run_backtest(config, data, opts, fast=args.fast)
    except CoinfloorError as e:
        print(f"cftrade backtest: {e}", file=sys.stderr)
        return 2
    result.config_path = args.config
    report = _report(result, args)
    if report is not None:
        print(report.table())
    else:
        print(json.dumps(result.summary.get("strategies"), indent=2))
    print(json.dumps(key_figures(result), sort_keys=True))
    return 0


def _report(result: Any, args: argparse.Namespace) -> Any:
    """The report table; with --out, the files too (plots only if matplotlib is there)."""
    from backtests.report import build_report, write_report

    try:
        if args.out is None:
            return build_report(result, interval=args.interval)
        plots = not args.no_plots
        if plots:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                print("cftrade backtest: matplotlib is not installed: no plots", file=sys.stderr)
                plots = False
        return write_report(result, args.out, interval=args.interval, plots=plots, html_report=plots)
    except CoinfloorError as e:
        print(f"cftrade backtest: report: {e}", file=sys.stderr)
        return None
