"""Parameter sweeps: many backtests of one config over a grid or a random sample of parameters.

A sweep is a YAML file (loaded by the strict :mod:`engine.configload` loader)::

    config: ../configs/market_maker.yaml     # the base run config
    recordings:                              # one or more (paths relative to this file)
      - calm.jsonl
      - {exchange: market.yaml, seed: 7, hours: 2}   # or made by the seeded generator first
    grid:                                    # every combination (or `random:`, below)
      strategies[0].params.half_spread: ["1.00", "2.00", "3.00"]
      strategies[0].params.size: ["0.01", "0.02"]
    objective: net_pnl                       # what to rank by (see OBJECTIVES)
    interval: "1h"                           # Sharpe/Sortino interval
    walk_forward: {folds: 3}                 # optional: rank on train windows, report test windows

``random: {samples: 20, seed: 7, params: {PATH: [choices...] | {low, high, step}}}`` draws
``samples`` parameter sets instead (duplicates dropped, so fewer may run on a small domain).
Ranges are decimal text (``{low: "1.00", high: "5.00", step: "0.25"}``, drawn on the step's
grid with integer arithmetic) or integers.

A parameter is named by its path in the run config: ``strategies[0].params.half_spread``,
``risk.max_loss``...  Each parameter set is applied to the base config and the result is
re-validated by the same loader as ``cftrade run`` (so ``half_spread: 2.5`` unquoted is refused
exactly as it would be in a config), all before any backtest starts.

Every (parameter set, recording, window) is one task: a plain, picklable :class:`Task` that
carries the finished config as YAML text.  Tasks run on a local process pool
(``concurrent.futures.ProcessPoolExecutor``, spawn context: no forked numba/trio state) or on a
Dask cluster (``scheduler=ADDRESS``); ``workers=0`` runs them in this process.  A task that
fails is reported with its error, never silently dropped.  Each worker process decodes a
recording once and replays it for every task.  Dask workers read the recordings by path, so
on a cluster of several machines the recordings (and a ``data_dir`` for generated ones) must
be on a file system they share, at the same path.

**Ranking.**  A set's score is the mean of the objective over its runs (recordings, and train
windows with walk-forward).  A run without a figure (Sharpe needs two intervals) makes the
set's score ``None``, and ``None`` ranks last; ties keep the set order.  ``max_drawdown`` and
``fees`` are minimised, everything else maximised (``maximize:`` overrides).

**Walk-forward.**  Each recording's time span is cut into ``folds + 1`` equal windows.  Fold
``k`` trains on window ``k − 1`` (or on windows ``0..k − 1`` with ``anchored: true``) and tests
on window ``k``: every set runs on the train window, the best one (by the mean over recordings)
then runs on the test window, and ``folds.csv`` reports both.  A window replay feeds the book
from the start of the recording and lets the strategies trade only inside the window.
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from backtests.result import BacktestResult
from engine.config import RunConfig
from engine.configload import ConfigPath, ConfigStruct, dumps, invalid, load, loads
from engine.errors import ConfigError, ScaleError
from engine.scale import from_scaled, to_scaled

__all__ = [
    "OBJECTIVES",
    "RandomSearch",
    "Range",
    "SweepResult",
    "SweepSpec",
    "GeneratedRecording",
    "Task",
    "WalkForward",
    "apply_params",
    "load_sweep",
    "parameter_sets",
    "run_sweep",
    "run_task",
]

OBJECTIVES: dict[str, bool] = {
    "net_pnl": True,
    "realized_pnl": True,
    "sharpe": True,
    "sortino": True,
    "fills": True,
    "volume": True,
    "fill_ratio": True,
    "max_drawdown": False,
    "fees": False,
}
"""Objectives a sweep can rank by, with whether larger is better by default."""

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*$")
_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class Range(ConfigStruct, frozen=True, kw_only=True):
    """Values ``low, low + step, ... <= high``: decimal text (``"0.25"``) or integers."""

    low: int | str
    """Smallest value (inclusive)."""
    high: int | str
    """Largest value (inclusive if on the step grid)."""
    step: int | str
    """Distance between values (> 0)."""

    def values(self) -> list[Any]:
        """Every value of the range, as ints or as decimal text with the step's decimals."""
        kinds = {type(self.low), type(self.high), type(self.step)}
        if kinds == {int}:
            lo, hi, st, scale = int(self.low), int(self.high), int(self.step), 0
        elif kinds == {str}:
            digits = max(_decimals(str(v)) for v in (self.low, self.high, self.step))
            scale = 10**digits
            try:
                lo, hi, st = (to_scaled(str(v), scale, k) for k, v in
                              (("low", self.low), ("high", self.high), ("step", self.step)))
            except ScaleError as e:
                raise invalid("low", str(e)) from None
        else:
            raise invalid("low", "low, high and step must be all integers or all decimal text")
        if st <= 0:
            raise invalid("step", f"must be > 0, was {self.step!r}")
        if hi < lo:
            raise invalid("high", f"must be >= low ({self.low!r}), was {self.high!r}")
        n = (hi - lo) // st + 1
        if n > 1_000_000:
            raise invalid("step", f"the range has {n} values; at most 1,000,000")
        if scale == 0:
            return [lo + k * st for k in range(n)]
        return [from_scaled(lo + k * st, scale) for k in range(n)]

    def __post_init__(self) -> None:
        self.values()  # validate now, with the file's line numbers


def _decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


ParamPath = Annotated[str, Meta(pattern=_PATH.pattern, description="A run-config path like strategies[0].params.size")]


class RandomSearch(ConfigStruct, frozen=True, kw_only=True):
    """Random search: ``samples`` parameter sets drawn with ``seed``."""

    samples: Annotated[int, Meta(ge=1, le=100_000)]
    """How many parameter sets to draw (duplicates are dropped)."""
    seed: Annotated[int, Meta(ge=0)] = 0
    """Seed of the draw (the same seed draws the same sets)."""
    params: Annotated[dict[ParamPath, list[Any] | Range], Meta(min_length=1)]
    """Path -> a list of choices or a {low, high, step} range."""


class WalkForward(ConfigStruct, frozen=True, kw_only=True):
    """Walk-forward validation: rank on a train window, report the next (test) window."""

    folds: Annotated[int, Meta(ge=1, le=100)]
    """Number of (train, test) folds; each recording is cut into folds + 1 windows."""
    anchored: bool = False
    """Train on every window before the test window (true) or on the one just before it (false)."""


class GeneratedRecording(ConfigStruct, frozen=True, kw_only=True):
    """A recording made by the seeded generator (backtests.generate) before the sweep runs."""

    exchange: ConfigPath
    """Exchange + participants YAML of the simulated market."""
    seed: Annotated[int, Meta(ge=0)]
    """Generator seed."""
    hours: Annotated[float, Meta(gt=0, le=48)]
    """Simulated hours."""
    markets: tuple[str, ...] | None = None
    """Markets to record (default: every market the participants trade)."""
    feed_latency_us: Annotated[int, Meta(ge=0)] = 1000
    """Exchange event -> receive time in the recording."""

    def make(self, cache: Path) -> str:
        """The recording's path in ``cache``, generated unless already there (same spec, same bytes)."""
        import hashlib

        from backtests.generate import GenerateOptions, generate

        key = hashlib.sha256(msgspec.json.encode(self) + Path(self.exchange).read_bytes()).hexdigest()[:16]
        path = cache / f"generated-{key}.jsonl"
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            generate(tmp, GenerateOptions(hours=self.hours, seed=self.seed, config=self.exchange, markets=self.markets,
                                          feed_latency_us=self.feed_latency_us))
            tmp.replace(path)
        return str(path)


class SweepSpec(ConfigStruct, frozen=True, kw_only=True):
    """A parameter sweep (see the module docstring)."""

    config: ConfigPath
    """The base run config (a `cftrade run` YAML file)."""
    recordings: Annotated[tuple[ConfigPath | GeneratedRecording, ...], Meta(min_length=1)]
    """Recordings to backtest on: a file (JSON Lines or the columnar format), or a mapping
    {exchange, seed, hours} for a recording the seeded generator makes before the sweep."""
    grid: Annotated[dict[ParamPath, Annotated[list[Any], Meta(min_length=1)]], Meta(min_length=1)] | None = None
    """Grid search: path -> list of values; every combination runs."""
    random: RandomSearch | None = None
    """Random search (instead of grid)."""
    objective: Literal["net_pnl", "realized_pnl", "sharpe", "sortino", "fills", "volume", "fill_ratio",
                       "max_drawdown", "fees"] = "net_pnl"
    """The figure to rank by."""
    maximize: bool | None = None
    """Rank larger first (default: true, except for max_drawdown and fees)."""
    strategy: str | None = None
    """Whose figures to rank by (required if the config has several strategies)."""
    interval: str = "1h"
    """Interval of the Sharpe/Sortino returns ("15m", "1h", "1d")."""
    seed: Annotated[int, Meta(ge=0)] | None = None
    """Replay seed (default: the config's run.seed)."""
    order_latency_us: Annotated[int, Meta(ge=0)] = 0
    """Replay order latency (strategy -> exchange), microseconds."""
    feed_latency_us: Annotated[int, Meta(ge=0)] = 0
    """Replay feed latency (exchange -> strategy), microseconds."""
    walk_forward: WalkForward | None = None
    """Optional walk-forward folds."""
    top: Annotated[int, Meta(ge=1)] = 20
    """How many sets the plot shows."""

    def __post_init__(self) -> None:
        if (self.grid is None) == (self.random is None):
            raise ValueError("a sweep needs exactly one of 'grid' or 'random'")
        if self.grid is not None and math.prod(len(v) for v in self.grid.values()) > 100_000:
            raise invalid("grid", "more than 100,000 combinations; use 'random' with a number of samples")
        from backtests.report import parse_interval

        try:
            parse_interval(self.interval)
        except ConfigError as e:
            raise invalid("interval", str(e)) from None

    @property
    def larger_is_better(self) -> bool:
        return OBJECTIVES[self.objective] if self.maximize is None else self.maximize


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and validate a SWEEP.yaml (paths resolved against its directory)."""
    return load(path, SweepSpec, resolve_secrets=False)


# -- parameter sets --------------------------------------------------------------------------


def parameter_sets(spec: SweepSpec) -> list[dict[str, Any]]:
    """The parameter sets of a sweep, in a fixed order (grid: row-major; random: draw order)."""
    if spec.grid is not None:
        keys = list(spec.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    assert spec.random is not None
    rnd = random.Random(spec.random.seed)
    domains = {k: (v.values() if isinstance(v, Range) else list(v)) for k, v in spec.random.params.items()}
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for _ in range(spec.random.samples):
        s = {k: d[rnd.randrange(len(d))] for k, d in domains.items()}
        key = msgspec.json.encode(s).decode()
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _tokens(path: str) -> list[str | int]:
    if not _PATH.match(path):
        raise ConfigError(f"parameter path {path!r} is not like strategies[0].params.size")
    return [name if name else int(idx) for name, idx in _TOKEN.findall(path)]


def _set_path(data: Any, path: str, value: Any) -> None:
    tokens = _tokens(path)
    node = data
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        where = path if last else "".join(f"[{t}]" if isinstance(t, int) else f".{t}" for t in tokens[: i + 1]).lstrip(".")
        if isinstance(tok, int):
            if not isinstance(node, list) or not 0 <= tok < len(node):
                size = f"the list has {len(node)} items" if isinstance(node, list) else "not a list"
                raise ConfigError(f"parameter {path}: {where} does not exist ({size})")
        elif not isinstance(node, dict) or tok not in node:
            keys = sorted(node) if isinstance(node, dict) else []
            hint = f"; keys there: {', '.join(keys)}" if keys else ""
            raise ConfigError(f"parameter {path}: {where} is not a key of the config{hint}")
        if last:
            node[tok] = value
        else:
            node = node[tok]


def apply_params(config: RunConfig, params: dict[str, Any], *, filename: str, base_dir: str | Path) -> str:
    """The YAML text of ``config`` with ``params`` set, validated like a run config.

    Raises ConfigError naming the parameter when a path does not exist or a value is refused.
    """
    data = msgspec.json.decode(msgspec.json.encode(config))  # plain dicts and lists (no tuples)
    for path, value in params.items():
        _set_path(data, path, value)
    text = dumps(data)
    try:
        loads(text, RunConfig, filename=filename, base_dir=base_dir, resolve_secrets=False)
    except ConfigError as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        # the loader's message names the key path; its line is of the generated text, so drop it
        why = re.sub(r"^[^:]*:\d+: ", "", str(e))
        raise ConfigError(f"parameter set {{{shown}}}: {why}") from None
    return text


# -- tasks -----------------------------------------------------------------------------------


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One backtest of a sweep: a finished config (YAML text), one recording, one window."""

    index: int
    """Position in the sweep's task list (results are reported in this order)."""
    set_index: int
    """Which parameter set."""
    config_text: str
    """The run config with the set applied (YAML, already validated)."""
    config_name: str
    """Label for messages (the base config's path)."""
    base_dir: str
    """Directory relative paths of the config resolve against."""
    recording: str
    """The recording to replay."""
    recording_index: int
    seed: int
    """Replay seed."""
    role: Literal["full", "train", "test"] = "full"
    fold: int | None = None
    window: tuple[int, int] | None = None
    """(start_us, end_us) the strategies trade in, or None for the whole recording."""
    interval: str = "1h"
    strategy: str | None = None
    order_latency_us: int = 0
    feed_latency_us: int = 0


BacktestFn = Callable[[RunConfig, Task], BacktestResult]


_DATA_CACHE: dict[tuple[str, int, int], Any] = {}
_DATA_CACHE_SIZE = 4
_DATA_LOCK = threading.Lock()  # Dask workers may run tasks in threads of one process


def _replay_data(path: str) -> Any:
    """The decoded recording, loaded once per process (a pool worker runs many tasks on it)."""
    import importlib

    replay: Any = importlib.import_module("backtests.replay")
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    with _DATA_LOCK:
        data = _DATA_CACHE.get(key)
        if data is None:
            if len(_DATA_CACHE) >= _DATA_CACHE_SIZE:
                _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
            data = _DATA_CACHE[key] = replay.load_recording(path)
    return data


def default_backtest(config: RunConfig, task: Task) -> BacktestResult:
    """Replay ``task.recording`` through ``config`` with the project's replay engine."""
    import importlib

    replay: Any = importlib.import_module("backtests.replay")
    start, end = task.window if task.window is not None else (None, None)
    options = replay.ReplayOptions(seed=task.seed, start_us=start, end_us=end, order_latency_us=task.order_latency_us,
                                   feed_latency_us=task.feed_latency_us)
    result: BacktestResult = replay.run_backtest(config, _replay_data(task.recording), options)
    result.config_path = task.config_name
    result.data_path = task.recording
    return result


def run_task(task: Task, backtest: BacktestFn | None = None) -> dict[str, Any]:
    """Run one task and return its figures (a small dict: cheap to send between processes).

    Exceptions become ``{"error": "..."}`` so one bad run cannot sink a sweep.
    """
    from backtests.report import build_report, summary_row

    out: dict[str, Any] = {"index": task.index, "set": task.set_index, "recording": task.recording_index,
                           "role": task.role, "fold": task.fold, "window": task.window, "error": None}
    t0 = time.perf_counter()
    try:
        cfg = loads(task.config_text, RunConfig, filename=task.config_name, base_dir=task.base_dir,
                    resolve_secrets=False)
        result = (backtest or default_backtest)(cfg, task)
        report = build_report(result, interval=task.interval)
        rows = summary_row(report)
        name = task.strategy or next(iter(rows), None)
        if name is None or name not in rows:
            raise ConfigError(f"strategy {name!r} has no figures (strategies: {', '.join(rows)})")
        out.update(metrics=rows[name], final_hash=result.final_hash, events=result.events,
                   replay_seconds=result.wall_seconds)
    except Exception as e:  # reported per task; the sweep goes on
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.perf_counter() - t0
    return out


# -- execution -------------------------------------------------------------------------------

Progress = Callable[[int, int], None]


def _execute(tasks: Sequence[Task], *, workers: int, scheduler: str | None, backtest: BacktestFn | None,
             progress: Progress | None) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    done = 0

    def finish(res: dict[str, Any]) -> None:
        nonlocal done
        results[res["index"]] = res
        done += 1
        if progress is not None:
            progress(done, len(tasks))

    if scheduler is not None:
        for res in _dask_map(tasks, scheduler, backtest):
            finish(res)
    elif workers <= 0 or len(tasks) <= 1:
        for t in tasks:
            finish(run_task(t, backtest))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_task, t, backtest) for t in tasks]
            for fut in as_completed(futures):
                finish(fut.result())
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _dask_map(tasks: Sequence[Task], scheduler: str, backtest: BacktestFn | None) -> Iterator[dict[str, Any]]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise ConfigError("--scheduler needs Dask: pip install 'dask[distributed]'") from None
    with Client(scheduler, timeout="30s") as client:
        futures = client.map(run_task, list(tasks), backtest=backtest, pure=False)
        for fut in dask_completed(futures):
            yield fut.result()


# -- the sweep -------------------------------------------------------------------------------


class SweepResult(msgspec.Struct, kw_only=True):
    """What a sweep produced: the sets, every run, the ranking and the walk-forward folds."""

    spec: SweepSpec
    recordings: list[str]
    """The recordings' paths (generated ones included), indexed by each run's ``recording``."""
    sets: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    wall_seconds: float
    workers: int
    scheduler: str | None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["error"] is not None]

    @property
    def best(self) -> dict[str, Any]:
        return self.ranking[0]


def _objective(run: dict[str, Any], objective: str) -> float | None:
    if run["error"] is not None:
        return None
    v = run["metrics"].get(objective)
    return None if v is None else float(v)


def _score(runs: Iterable[dict[str, Any]], objective: str) -> float | None:
    vals = [_objective(r, objective) for r in runs]
    if not vals or any(v is None for v in vals):
        return None
    return sum(v for v in vals if v is not None) / len(vals)


def _rank(scores: dict[int, float | None], larger: bool) -> list[int]:
    def key(i: int) -> tuple[int, float, int]:
        s = scores[i]
        return (1, 0.0, i) if s is None else (0, -s if larger else s, i)

    return sorted(scores, key=key)


def _windows(span: tuple[int, int], wf: WalkForward) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(train, test) windows of each fold over ``span`` (equal integer windows, see module doc)."""
    start, end = span
    n = wf.folds + 1
    edges = [start + (end - start) * k // n for k in range(n + 1)]
    out = []
    for k in range(1, n):
        train = (edges[0] if wf.anchored else edges[k - 1], edges[k])
        out.append((train, (edges[k], edges[k + 1])))
    return out


def recording_span(path: str) -> tuple[int, int]:
    """(first, last) receive time in µs of a recording, as the replay engine reads it."""
    data = _replay_data(path)
    return (int(data.start_us), int(data.end_us))


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int = 2,
    scheduler: str | None = None,
    backtest: BacktestFn | None = None,
    progress: Progress | None = None,
    span: Callable[[str], tuple[int, int]] = recording_span,
    data_dir: str | Path | None = None,
) -> SweepResult:
    """Run every task of ``spec`` and rank the parameter sets (see the module docstring).

    ``backtest`` replaces the replay engine (it must be picklable: a module-level function)
    and ``span`` the recording time-span reader; both exist for tests and other engines.
    Generated recordings are made once into ``data_dir`` (default: a ``cftrade-sweep-data``
    directory in the system temp dir) and reused by later sweeps with the same spec.
    """
    if data_dir is None:
        import tempfile

        data_dir = Path(tempfile.gettempdir()) / "cftrade-sweep-data"
    t_start = time.perf_counter()
    base = load(spec.config, RunConfig, resolve_secrets=False)
    names = [s.name for s in base.strategies]
    if spec.strategy is not None and spec.strategy not in names:
        raise ConfigError(f"strategy {spec.strategy!r} is not in {spec.config} (strategies: {', '.join(names)})")
    if spec.strategy is None and len(names) > 1:
        raise ConfigError(f"{spec.config} has {len(names)} strategies: name the one to rank by with 'strategy'")
    strategy = spec.strategy or names[0]
    recordings: list[str] = []
    for rec in spec.recordings:
        if isinstance(rec, GeneratedRecording):
            recordings.append(rec.make(Path(data_dir)))
        elif not Path(rec).exists():
            raise ConfigError(f"recording {rec} does not exist")
        else:
            recordings.append(rec)
    sets = parameter_sets(spec)
    base_dir = str(Path(spec.config).parent)
    texts = [apply_params(base, s, filename=spec.config, base_dir=base_dir) for s in sets]
    seed = spec.seed if spec.seed is not None else base.run.seed

    def task(i: int, set_i: int, rec_i: int, **kw: Any) -> Task:
        return Task(index=i, set_index=set_i, config_text=texts[set_i], config_name=spec.config, base_dir=base_dir,
                    recording=recordings[rec_i], recording_index=rec_i, seed=seed, interval=spec.interval,
                    strategy=strategy, order_latency_us=spec.order_latency_us,
                    feed_latency_us=spec.feed_latency_us, **kw)

    larger = spec.larger_is_better
    folds: list[dict[str, Any]] = []
    if spec.walk_forward is None:
        tasks = [task(si * len(recordings) + ri, si, ri)
                 for si in range(len(sets)) for ri in range(len(recordings))]
        runs = _execute(tasks, workers=workers, scheduler=scheduler, backtest=backtest, progress=progress)
        ranked_runs = runs
    else:
        wins = [_windows(span(r), spec.walk_forward) for r in recordings]
        train_tasks: list[Task] = []
        for fold in range(spec.walk_forward.folds):
            for si in range(len(sets)):
                for ri in range(len(recordings)):
                    train_tasks.append(task(len(train_tasks), si, ri, role="train", fold=fold, window=wins[ri][fold][0]))
        runs = _execute(train_tasks, workers=workers, scheduler=scheduler, backtest=backtest, progress=progress)
        best_of_fold = []
        for fold in range(spec.walk_forward.folds):
            scores = {si: _score((r for r in runs if r["fold"] == fold and r["set"] == si), spec.objective)
                      for si in range(len(sets))}
            best = _rank(scores, larger)[0]
            best_of_fold.append((best, scores[best]))
        # the chosen set of each fold on its test windows (task indices restart at 0 per batch)
        test_tasks = [task(fold * len(recordings) + ri, best_of_fold[fold][0], ri, role="test", fold=fold,
                           window=wins[ri][fold][1])
                      for fold in range(spec.walk_forward.folds) for ri in range(len(recordings))]
        test_runs = _execute(test_tasks, workers=workers, scheduler=scheduler, backtest=backtest, progress=progress)
        for r in test_runs:
            r["index"] += len(runs)
        for fold in range(spec.walk_forward.folds):
            best, train_score = best_of_fold[fold]
            tr = [r for r in test_runs if r["fold"] == fold]
            folds.append({
                "fold": fold,
                "train": [list(w[fold][0]) for w in wins],
                "test": [list(w[fold][1]) for w in wins],
                "set": best,
                "params": sets[best],
                "train_score": train_score,
                "test_score": _score(tr, spec.objective),
                "test_net_pnl": _score(tr, "net_pnl"),
                "errors": [r["error"] for r in tr if r["error"] is not None],
            })
        ranked_runs = runs
        runs = runs + test_runs
    scores = {si: _score((r for r in ranked_runs if r["set"] == si), spec.objective) for si in range(len(sets))}
    ranking = []
    for rank, si in enumerate(_rank(scores, larger), start=1):
        mine = [r for r in ranked_runs if r["set"] == si]
        row: dict[str, Any] = {"rank": rank, "set": si, "params": sets[si], "score": scores[si],
                               "runs": len(mine), "errors": sum(r["error"] is not None for r in mine)}
        for key in ("net_pnl", "sharpe", "max_drawdown", "fills", "fees"):
            row[key] = _score(mine, key) if key != spec.objective else scores[si]
        ranking.append(row)
    return SweepResult(spec=spec, recordings=recordings, sets=sets, runs=runs, ranking=ranking, folds=folds,
                       wall_seconds=time.perf_counter() - t_start, workers=workers, scheduler=scheduler)


# -- output ----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 10))
    return str(v)


def write_ranking_csv(result: SweepResult, path: str | Path) -> Path:
    """ranking.csv: rank, set, one column per parameter, the score and the main figures."""
    keys = list(result.sets[0]) if result.sets else []
    p = Path(path)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["rank", "set", *keys, f"score_{result.spec.objective}", "net_pnl", "sharpe", "max_drawdown",
                    "fills", "fees", "runs", "errors"])
        for row in result.ranking:
            w.writerow([row["rank"], row["set"], *(_fmt(row["params"][k]) for k in keys), _fmt(row["score"]),
                        *(_fmt(row[k]) for k in ("net_pnl", "sharpe", "max_drawdown", "fills", "fees")),
                        row["runs"], row["errors"]])
    return p


def write_runs_csv(result: SweepResult, path: str | Path) -> Path:
    """runs.csv: every task's figures (one row per set x recording x window)."""
    p = Path(path)
    metric_keys = ["net_pnl", "realized_pnl", "unrealized_pnl", "fees", "volume", "fills", "fill_ratio",
                   "max_drawdown", "sharpe", "sortino", "inventory_abs_mean"]
    with p.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["set", "recording", "role", "fold", "window_start_us", "window_end_us", *metric_keys,
                    "events", "seconds", "final_hash", "error"])
        for r in result.runs:
            m = r.get("metrics") or {}
            win = r["window"] or (None, None)
            w.writerow([r["set"], result.recordings[r["recording"]], r["role"], _fmt(r["fold"]),
                        _fmt(win[0]), _fmt(win[1]), *(_fmt(m.get(k)) for k in metric_keys), _fmt(r.get("events")),
                        _fmt(r["seconds"]), r.get("final_hash") or "", r["error"] or ""])
    return p


def write_folds_csv(result: SweepResult, path: str | Path) -> Path:
    """folds.csv: per walk-forward fold, the chosen set with its train and test scores."""
    keys = list(result.sets[0]) if result.sets else []
    p = Path(path)
    with p.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["fold", "train_start_us", "train_end_us", "test_start_us", "test_end_us", "set", *keys,
                    "train_score", "test_score", "test_net_pnl", "errors"])
        for f in result.folds:
            w.writerow([f["fold"], f["train"][0][0], f["train"][0][1], f["test"][0][0], f["test"][0][1], f["set"],
                        *(_fmt(f["params"][k]) for k in keys), _fmt(f["train_score"]), _fmt(f["test_score"]),
                        _fmt(f["test_net_pnl"]), "; ".join(f["errors"])])
    return p


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot_ranking(result: SweepResult, path: str | Path) -> Path:
    """ranking.png: the top sets' scores, and the score against each parameter."""
    from backtests.report import _figure

    keys = list(result.sets[0]) if result.sets else []
    fig, axes = _figure(1 + len(keys))
    top = [r for r in result.ranking[: result.spec.top] if r["score"] is not None]
    ax = axes[0]
    ax.barh([f"#{r['set']}" for r in reversed(top)], [r["score"] for r in reversed(top)], color="tab:blue")
    ax.set_title(f"top {len(top)} parameter sets by {result.spec.objective}")
    ax.set_xlabel(result.spec.objective)
    for ax, key in zip(axes[1:], keys, strict=True):
        xs = [result.sets[r["set"]][key] for r in result.ranking if r["score"] is not None]
        ys = [r["score"] for r in result.ranking if r["score"] is not None]
        nums = [_num(x) for x in xs]
        if all(n is not None for n in nums):
            ax.scatter(nums, ys, s=14)
        else:  # categorical values
            cats = sorted({str(x) for x in xs})
            ax.scatter([cats.index(str(x)) for x in xs], ys, s=14)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(key)
        ax.set_ylabel(result.spec.objective)
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def write_outputs(result: SweepResult, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """ranking.csv, runs.csv, folds.csv (walk-forward only), ranking.png and sweep.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ranking": write_ranking_csv(result, out / "ranking.csv"), "runs": write_runs_csv(result, out / "runs.csv")}
    if result.folds:
        paths["folds"] = write_folds_csv(result, out / "folds.csv")
    if plot and result.ranking:
        paths["plot"] = plot_ranking(result, out / "ranking.png")
    doc = {"objective": result.spec.objective, "larger_is_better": result.spec.larger_is_better,
           "sets": len(result.sets), "runs": len(result.runs), "errors": len(result.errors),
           "wall_seconds": result.wall_seconds, "workers": result.workers, "scheduler": result.scheduler,
           "best": result.ranking[0] if result.ranking else None, "folds": result.folds}
    (out / "sweep.json").write_text(msgspec.json.format(msgspec.json.encode(doc)).decode() + "\n")
    paths["json"] = out / "sweep.json"
    return paths


def progress_bar(stream: Any = sys.stderr) -> Progress:
    """A one-line progress counter on ``stream`` (carriage-return updates)."""
    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        width = 30
        fill = width * done // max(total, 1)
        el = time.perf_counter() - t0
        stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} runs, {el:.1f} s")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show
