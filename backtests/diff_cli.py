"""``cftrade diff``: run a config live on the local exchange, backtest its recording, compare.

::

    cftrade diff --config configs/market_maker.yaml --duration 600          # live + backtest + diff
    cftrade diff --config configs/market_maker.yaml --live run.jsonl        # diff a recorded run
    cftrade diff --config configs/market_maker.yaml --duration 600 --fast   # backtest on the fast path

Without ``--live``, the config runs as ``cftrade run`` would, on the embedded exchange, but in
virtual time (trio's MockClock, WebSocket over memory streams: ten minutes take seconds),
while everything its strategies receive is recorded (``--record FILE`` keeps the recording).
The recording is then replayed (backtests/replay.py) with the same config and seed, and the
fills are compared one by one (backtests/parity.py): the share of live fills the backtest
reproduced, the fills only one side has, and the PnL of each side at one common mark.

With ``--live FILE`` the recording of an earlier run is used (it must be the run's own
session, whose notices of our orders carry tonces: ``recording.enabled`` in the run config);
live fills are read from it, so they carry no strategy name and are matched on side, price,
quantity and time only.

Prints a table and one JSON line.  Exit status: 0; with ``--check``, 1 when fewer than 95 %
of live fills are reproduced or the PnL differs by more than 2 %; 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from engine.errors import CoinfloorError

GOAL_REPRODUCED = 0.95
GOAL_PNL_PCT = 2.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cftrade diff", description="Compare a live run with its backtest, fill by fill.")
    p.add_argument("--config", required=True, help="run config (YAML); the embedded exchange unless --live")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--duration", type=float, help="virtual seconds of the live run (default: run.duration, else 600)")
    src.add_argument("--live", type=Path, help="a recording of a live run (its own session) instead of running one")
    p.add_argument("--record", type=Path, help="write the live run's recording here (cftrade-rec/1 JSONL)")
    p.add_argument("--seed", type=int, help="seed of the run and of the backtest (default: the config's run.seed)")
    p.add_argument("--end-us", type=int, help="with --live: when the strategies stopped (default: the header's stopped_us)")
    p.add_argument("--tolerance-us", type=int, default=1_000_000, help="fill time tolerance (µs, default 1 s)")
    p.add_argument("--all-markets", action="store_true",
                   help="keep the simulated participants of markets the config does not trade (their trades share "
                        "the rounding stream, so the replay's rounding draws will differ)")
    p.add_argument("--fast", action="store_true", help="backtest with the fast replay (backtests/fast.py)")
    p.add_argument("--rounding", choices=["shared", "strategy"], default="shared",
                   help="the backtest's stochastic-rounding streams (default: shared, as the live exchange; the fast "
                        "path emulates the draws of the recorded trades it does not re-trade)")
    p.add_argument("--recorded-fees", choices=["first_tier", "volume"], default="first_tier",
                   help="fee tier of the recorded users' stand-ins (default: first_tier; see ReplayOptions)")
    p.add_argument("--check", action="store_true", help="exit 1 unless >= 95 %% reproduced and PnL within 2 %%")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    import msgspec

    from backtests.parity import (
        diff_fills,
        format_report,
        intent_sequence,
        last_mid,
        live_fills_from_messages,
        run_live,
        write_recording,
    )
    from backtests.replay import Replay, ReplayOptions, load_recording, recorded_messages
    from engine.config import load_run_config

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_run_config(args.config, resolve_secrets=False)
        if args.seed is not None:
            config = msgspec.structs.replace(config, run=msgspec.structs.replace(config.run, seed=args.seed))
        if args.live is None:
            duration = args.duration or config.run.duration or 600.0
            print(f"cftrade diff: running {args.config} for {duration:g} virtual seconds ...", file=sys.stderr)
            live = run_live(config, duration, only_config_markets=not args.all_markets)
            messages = live.messages
            live_fills = live.fills
            data = live.data
            end_us = live.stopped_us
            any_strategy = False
            live_intents: list[Any] | None = live.intents
            if args.record is not None:
                write_recording(args.record, messages, header=live.header)
        else:
            data = load_recording(args.live)
            messages = recorded_messages(args.live)
            live_fills = live_fills_from_messages(messages)
            end_us = args.end_us if args.end_us is not None else data.header.get("stopped_us")
            any_strategy = True
            live_intents = None
        cls: type[Replay] = Replay
        if args.fast:
            from backtests.fast import FastReplay

            cls = FastReplay
        replay = cls(config, data, ReplayOptions(seed=config.run.seed, end_us=end_us, rounding=args.rounding,
                                                 recorded_fees=args.recorded_fees),
                     config_path=args.config)
        result = replay.run()
    except CoinfloorError as e:
        print(f"cftrade diff: {e}", file=sys.stderr)
        return 2
    market = config.strategies[0].market_info
    report = diff_fills(live_fills, result.fills, market=market, scales=config.scales,
                        mark=last_mid(messages, market), tolerance_us=args.tolerance_us, any_strategy=any_strategy)
    print(format_report(report))
    out: dict[str, Any] = {"config": args.config, "seed": config.run.seed, "mode": "fast" if args.fast else "exact",
                           **report.as_dict(),
                           "backtest_hash": result.final_hash}
    if live_intents is not None:
        bt_intents = intent_sequence(replay.core)
        same = sum(1 for a, b in zip(live_intents, bt_intents, strict=False) if a == b)
        print(f"orders placed: live {len(live_intents)}, backtest {len(bt_intents)}, "
              f"identical prefix {_prefix(live_intents, bt_intents)}")
        out["intents"] = {"live": len(live_intents), "backtest": len(bt_intents), "same_position": same,
                          "identical": live_intents == bt_intents}
    print(json.dumps(out, sort_keys=True))
    if args.check:
        pct = report.pnl_diff_pct
        ok = report.reproduced >= GOAL_REPRODUCED and (pct is None or pct <= GOAL_PNL_PCT)
        return 0 if ok else 1
    return 0


def _prefix(a: list[Any], b: list[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
