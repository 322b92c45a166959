"""Example backtest scenarios that double as golden tests.

Each scenario is a directory here holding:

* ``scenario.yaml`` -- what it shows, the run config, how to make its data (the seeded
  generator: exchange and participants config, seed, simulated hours) and how to replay
  (seed, latencies, report interval);
* ``config.yaml`` -- the strategy config (a normal ``cftrade run`` / ``cftrade backtest``
  file) and ``exchange.yaml`` -- the simulated market (``cftrade exchange`` format);
* ``expected.json`` -- the expected summary: the replay's ``final_hash`` (S2: fills, balances
  and positions) and the report's exact figures.

The data are not stored: they are regenerated from the seed (the generator is deterministic,
byte for byte), replayed (deterministic too), and the figures compared exactly.  Run them::

    python -m backtests.scenarios                     # all: regenerate, replay, compare
    python -m backtests.scenarios mm_calm --out DIR   # one, with its full report in DIR
    python -m backtests.scenarios --update            # accept the current figures as golden

A change to the exchange core, the participants, the generator, a strategy or the replay
that moves a single fill changes these figures: if the change is intended, run ``--update``
and commit the new ``expected.json`` files with it (the diff shows what moved).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from backtests.report import Report, build_report, parse_interval, write_report
from backtests.result import BacktestResult
from engine.configload import ConfigPath, ConfigStruct, invalid, load
from engine.errors import ConfigError

__all__ = ["DIR", "DataSpec", "ReplaySpec", "Scenario", "ScenarioSpec", "compare", "golden", "load_scenario",
           "make_data", "names", "run_scenario"]

DIR = Path(__file__).resolve().parent
"""Where the shipped scenarios live (one directory each)."""


class DataSpec(ConfigStruct, frozen=True, kw_only=True):
    """How to make a scenario's recording with the seeded generator (backtests.generate)."""

    exchange: ConfigPath
    """Exchange + participants YAML of the simulated market."""
    seed: Annotated[int, Meta(ge=0)]
    """Generator seed (participants, rounding, jitter)."""
    hours: Annotated[float, Meta(gt=0, le=48)]
    """Simulated hours recorded after the warm-up."""
    markets: tuple[str, ...] | None = None
    """Markets to record (default: every market the participants trade)."""
    feed_latency_us: Annotated[int, Meta(ge=0)] = 1000
    """Exchange event -> receive time in the recording."""
    warmup_s: Annotated[float, Meta(ge=0)] = 60.0
    """Simulated seconds before recording starts (so the snapshot holds a book)."""


class ReplaySpec(ConfigStruct, frozen=True, kw_only=True):
    """How to replay and report."""

    seed: Annotated[int, Meta(ge=0)] | None = None
    """Replay seed (default: the config's run.seed)."""
    order_latency_us: Annotated[int, Meta(ge=0)] = 0
    feed_latency_us: Annotated[int, Meta(ge=0)] = 0
    mark_interval_us: Annotated[int, Meta(gt=0)] = 1_000_000
    interval: str = "5m"
    """Sharpe/Sortino interval of the report."""

    def __post_init__(self) -> None:
        try:
            parse_interval(self.interval)
        except ConfigError as e:
            raise invalid("interval", str(e)) from None


class ScenarioSpec(ConfigStruct, frozen=True, kw_only=True):
    """scenario.yaml."""

    description: str
    """One paragraph: what the scenario shows."""
    config: ConfigPath
    """The run config replayed (strategies, risk)."""
    data: DataSpec
    replay: ReplaySpec = ReplaySpec()


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded scenario: its name, directory and spec."""

    name: str
    directory: Path
    spec: ScenarioSpec

    @property
    def expected_path(self) -> Path:
        return self.directory / "expected.json"

    def expected(self) -> dict[str, Any] | None:
        """The golden figures, or None if the scenario has none yet."""
        p = self.expected_path
        return json.loads(p.read_text()) if p.exists() else None


def names() -> list[str]:
    """The shipped scenarios, sorted."""
    return sorted(p.parent.name for p in DIR.glob("*/scenario.yaml"))


def load_scenario(name: str | Path) -> Scenario:
    """A shipped scenario by name, or any directory holding a scenario.yaml."""
    d = Path(name)
    if not (d / "scenario.yaml").exists():
        d = DIR / str(name)
    if not (d / "scenario.yaml").exists():
        raise ConfigError(f"no scenario {str(name)!r}: known scenarios are {', '.join(names())}")
    return Scenario(d.name, d, load(d / "scenario.yaml", ScenarioSpec, resolve_secrets=False))


def make_data(sc: Scenario, out: str | Path) -> Path:
    """Generate the scenario's recording into ``out`` (``.jsonl`` or ``.npz``)."""
    from backtests.generate import GenerateOptions, generate

    d = sc.spec.data
    opts = GenerateOptions(hours=d.hours, seed=d.seed, config=d.exchange, markets=d.markets,
                           feed_latency_us=d.feed_latency_us, warmup_s=d.warmup_s)
    generate(out, opts)
    return Path(out)


def run_scenario(sc: Scenario, data: str | Path, *, progress: bool = False) -> tuple[BacktestResult, Report]:
    """Replay the scenario's data through its config and build the report."""
    from backtests.replay import ReplayOptions, run_backtest

    r = sc.spec.replay
    opts = ReplayOptions(seed=r.seed, order_latency_us=r.order_latency_us, feed_latency_us=r.feed_latency_us,
                         mark_interval_us=r.mark_interval_us, exchange_config=sc.spec.data.exchange,
                         progress=progress)
    result = run_backtest(sc.spec.config, data, opts)
    return result, build_report(result, interval=r.interval)


def golden(result: BacktestResult, report: Report) -> dict[str, Any]:
    """The figures a scenario pins: exact text and integers (ratios to 6 significant digits)."""

    def g(v: float | None) -> str | None:
        return None if v is None else f"{v:.6g}"

    out: dict[str, Any] = {"events": result.events, "final_hash": result.final_hash, "strategies": {}}
    for name, m in report.strategies.items():
        d = m.to_dict()
        out["strategies"][name] = {
            "net_pnl": d["net_pnl"],
            "realized_pnl": d["realized_pnl"],
            "unrealized_pnl": d["unrealized_pnl"],
            "fees": d["fees"],
            "fills": m.fills,
            "buys": m.buys,
            "sells": m.sells,
            "orders_placed": m.orders_placed,
            "volume_base": d["volume_base"],
            "volume_counter": d["volume_counter"],
            "max_drawdown": d["max_drawdown"],
            "sharpe": g(m.sharpe),
            "sortino": g(m.sortino),
            "inventory_max": d["inventory"]["max"],
            "inventory_min": d["inventory"]["min"],
            "inventory_final": d["inventory"]["final"],
        }
    return out


def compare(expected: dict[str, Any], observed: dict[str, Any], prefix: str = "") -> list[str]:
    """Every difference between two golden dicts, as ``path: expected X, got Y`` lines."""
    out: list[str] = []
    for key in sorted(set(expected) | set(observed)):
        path = f"{prefix}.{key}" if prefix else key
        e, o = expected.get(key, "<absent>"), observed.get(key, "<absent>")
        if isinstance(e, dict) and isinstance(o, dict):
            out.extend(compare(e, o, path))
        elif e != o:
            out.append(f"{path}: expected {e!r}, got {o!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m backtests.scenarios", description="run the example scenarios")
    ap.add_argument("scenarios", nargs="*", help=f"names (default: all of {', '.join(names())})")
    ap.add_argument("--update", action="store_true", help="write the observed figures as expected.json")
    ap.add_argument("--out", metavar="DIR", help="also write each scenario's full report to DIR/NAME/")
    ap.add_argument("--data", metavar="DIR", help="keep the generated recordings in DIR (default: a temp dir)")
    args = ap.parse_args(argv)
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data or tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        for name in args.scenarios or names():
            try:
                sc = load_scenario(name)
            except ConfigError as e:
                print(e, file=sys.stderr)
                return 2
            t0 = time.perf_counter()
            data = make_data(sc, data_dir / f"{sc.name}.jsonl")
            t1 = time.perf_counter()
            result, report = run_scenario(sc, data)
            t2 = time.perf_counter()
            if args.out:
                write_report(result, Path(args.out) / sc.name, interval=sc.spec.replay.interval)
            seen = golden(result, report)
            print(f"== {sc.name}: {result.events:,} events, generated in {t1 - t0:.1f} s, replayed in {t2 - t1:.1f} s")
            print(report.table())
            want = sc.expected()
            if args.update:
                sc.expected_path.write_text(json.dumps(seen, indent=2) + "\n")
                print(f"wrote {sc.expected_path}")
            elif want is None:
                print(f"{sc.name}: no expected.json yet (run with --update)")
                status = 1
            else:
                diffs = compare(want, seen)
                print(f"{sc.name}: " + ("matches expected.json" if not diffs else "DIFFERS:\n  " + "\n  ".join(diffs)))
                status |= bool(diffs)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
