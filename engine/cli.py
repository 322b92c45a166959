"""``cftrade`` command line: a thin dispatcher to the module that owns each command.

Each command lives beside the code it drives and exposes ``main(argv) -> int``; this file
only maps names to modules, so adding a command never touches another command's code.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, help).  ``bench`` takes a second word: ``cftrade bench book``.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("engine.runner_cli", "run strategies from a YAML config (embedded exchange by default)"),
    "check": ("engine.config_cli", "validate a YAML config without any network I/O"),
    "exchange": ("engine.exchange.cli", "serve the local Coinfloor-protocol exchange"),
    "record": ("backtests.record_cli", "record a market from a Coinfloor-protocol endpoint"),
    "backtest": ("backtests.backtest_cli", "replay a recording through strategies"),
    "sweep": ("backtests.sweep_cli", "parameter sweep over recordings"),
    "diff": ("backtests.diff_cli", "compare a live run with its backtest, fill by fill"),
    "kill": ("engine.kill_cli", "halt a running strategy (kill switch)"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "codec": ("benchmarks.bench_codec", "decode throughput of L3 notices vs json.loads"),
    "book": ("benchmarks.bench_book", "order book wire/batch paths vs a naive baseline"),
    "exchange": ("benchmarks.bench_exchange", "exchange core ops/s and WebSocket latency"),
    "latency": ("benchmarks.bench_latency", "tick-to-order latency over loopback"),
    "replay": ("benchmarks.bench_replay", "backtest replay throughput"),
}

USAGE = "usage: cftrade COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(
    f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()
) + "\n  bench      benchmarks: " + ", ".join(BENCHES) + "\n"


def _load(module: str, what: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and module.startswith(e.name):
            print(f"cftrade: '{what}' is not available yet in this version", file=sys.stderr)
            raise SystemExit(2) from None
        raise


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] in ("-V", "--version"):
        from engine import __version__

        print(f"cftrade {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name == "bench":
        if not rest or rest[0] not in BENCHES:
            sys.stdout.write("usage: cftrade bench {" + ",".join(BENCHES) + "} [ARGS...]\n")
            return 2
        mod = _load(BENCHES[rest[0]][0], f"bench {rest[0]}")
        return int(mod.main(rest[1:]) or 0)  # type: ignore[attr-defined]
    if name not in COMMANDS:
        sys.stderr.write(f"cftrade: unknown command {name!r}\n\n" + USAGE)
        return 2
    mod = _load(COMMANDS[name][0], name)
    return int(mod.main(rest) or 0)  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
