"""``cftrade sweep SWEEP.yaml [--scheduler ADDRESS] [--workers N] [--out DIR]``.

Runs the parameter sweep described by SWEEP.yaml (see :mod:`backtests.sweep`) on a local
process pool (``--workers``, default: one per CPU) or on a Dask cluster (``--scheduler
tcp://host:8786``), prints the ranking and writes ranking.csv, runs.csv, folds.csv (with
walk-forward), ranking.png and sweep.json to ``--out`` (default ``sweep-<name>/`` beside the
sweep file).  Exit status: 0 when every run worked, 1 when some failed (their errors are in
runs.csv and on stderr), 2 for a bad sweep file or arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from backtests.sweep import SweepResult, load_sweep, progress_bar, run_sweep, write_outputs
from engine.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cftrade sweep", description="parameter sweep over recordings")
    p.add_argument("sweep", help="SWEEP.yaml: base config, recordings, grid or random search, objective")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (tcp://host:8786)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: CPU count; 0 runs in this process)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: sweep-<name>/ beside the sweep file)")
    p.add_argument("--data-dir", metavar="DIR", help="where generated recordings are made and kept "
                   "(default: cftrade-sweep-data in the temp dir)")
    p.add_argument("--no-plot", action="store_true", help="skip ranking.png")
    p.add_argument("--top", type=int, default=10, metavar="K", help="rows of the ranking to print (default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def ranking_table(result: SweepResult, top: int) -> str:
    """The first ``top`` rows of the ranking as a plain-text table."""
    keys = list(result.sets[0]) if result.sets else []
    obj = result.spec.objective
    head = ["rank", "set", *keys, obj, *(["net_pnl"] if obj != "net_pnl" else []), "fills", "errors"]
    rows = [head]
    for r in result.ranking[:top]:
        score = "-" if r["score"] is None else f"{r['score']:.6g}"
        net = "-" if r["net_pnl"] is None else f"{r['net_pnl']:.2f}"
        fills = "-" if r["fills"] is None else f"{r['fills']:.1f}"
        rows.append([str(r["rank"]), str(r["set"]), *(str(r["params"][k]) for k in keys), score,
                     *([net] if obj != "net_pnl" else []), fills, str(r["errors"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_sweep(args.sweep)
        workers = (os.cpu_count() or 1) if args.workers is None else args.workers
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, was {workers}")
        progress = None if args.quiet else progress_bar(sys.stderr)
        result = run_sweep(spec, workers=workers, scheduler=args.scheduler, progress=progress,
                           data_dir=args.data_dir)
    except ConfigError as e:
        print(f"cftrade sweep: {e}", file=sys.stderr)
        return 2
    src = Path(args.sweep)
    out = Path(args.out) if args.out else src.parent / f"sweep-{src.stem}"
    paths = write_outputs(result, out, plot=not args.no_plot)
    print(ranking_table(result, args.top))
    where = f"Dask {args.scheduler}" if args.scheduler else f"{workers} local worker(s)"
    print(f"{len(result.sets)} sets x {len(spec.recordings)} recording(s): {len(result.runs)} runs in "
          f"{result.wall_seconds:.1f} s on {where}; outputs in {paths['ranking'].parent}")
    if result.folds:
        for f in result.folds:
            test = "-" if f["test_score"] is None else f"{f['test_score']:.6g}"
            train = "-" if f["train_score"] is None else f"{f['train_score']:.6g}"
            print(f"fold {f['fold']}: set {f['set']} {f['params']} train {train} -> test {test}")
    for r in result.errors:
        print(f"run set {r['set']} recording {r['recording']} ({r['role']}): {r['error']}", file=sys.stderr)
    return 1 if result.errors else 0
