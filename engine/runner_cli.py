"""``cftrade run CONFIG [--duration S] [--live] [--summary FILE]``: run strategies from YAML.

With ``exchange:`` omitted (or ``{config: FILE}``) the local exchange and its simulated
participants start in-process on a loopback port and the strategies trade with it through the
real WebSocket client.  A real endpoint additionally needs ``live: true`` in the config *and*
``--live`` here (RELIABILITY X11).  The mode and target are printed at start; the live status
goes to stderr; a run summary is printed and written as JSON (``--summary``, default
``<state_dir>/summary.json``).  Exit status: 0 on a clean run (also after SIGINT/SIGTERM),
1 on a failed run, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import trio

from engine.errors import CoinfloorError
from engine.runner import Runner, RunOptions, StatusAwareHandler


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cftrade run", description="Run the strategies of a YAML config.")
    p.add_argument("config", help="run config (YAML); see configs/")
    p.add_argument("--duration", type=float, help="seconds to trade (default: run.duration, or until Ctrl-C)")
    p.add_argument("--live", action="store_true", help="allow a real (non-local) endpoint; the config must say live: true")
    p.add_argument("--summary", type=Path, help="write the run summary JSON here")
    p.add_argument("--no-status", action="store_true", help="no live status on stderr")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from engine.config import load_run_config

    try:
        config = load_run_config(args.config)
    except CoinfloorError as e:
        print(f"cftrade run: {e}", file=sys.stderr)
        return 2
    level = (args.log_level or config.logging.level).upper()
    # Log records go above the live status (a plain StreamHandler's lines were erased by
    # the status's next in-place redraw).
    handlers: list[logging.Handler] = [StatusAwareHandler()]
    if config.logging.file:
        handlers.append(logging.FileHandler(config.logging.file))
    logging.basicConfig(level=getattr(logging, level), handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.live and config.exchange.embedded:
        print("cftrade run: --live is for a real endpoint (exchange.url with live: true); "
              "this config trades on the embedded local exchange", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print("cftrade run: --duration must be > 0", file=sys.stderr)
        return 2
    summary_path = args.summary or Path(config.run.state_dir) / "summary.json"
    opts = RunOptions(duration=args.duration, live=args.live, status=not args.no_status and sys.stderr.isatty() or False,
                      summary_path=summary_path)
    target = "embedded local exchange (simulated market)" if config.exchange.embedded else config.exchange.describe()
    print(f"cftrade run: mode={'live' if args.live else 'local'} target={target} "
          f"strategies={', '.join(s.name for s in config.strategies)}", file=sys.stderr)
    try:
        result = trio.run(Runner(config, opts).run)
    except CoinfloorError as e:
        print(f"cftrade run: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.summary, indent=2))
    # resolve(): the configs say "../runs/NAME"; show where that is, not configs/../runs
    print(f"cftrade run: summary written to {Path(summary_path).resolve()}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
