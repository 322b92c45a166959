"""Backtest reports: the figures people judge a strategy by, from one :class:`BacktestResult`.

::

    report = build_report(result, interval="1h")     # exact PnL, drawdown, Sharpe, inventory
    print(report.table())                            # terminal summary
    write_report(result, "out/", interval="1h")      # summary.json, fills.csv, PNGs, report.html

What is computed, per strategy (money stays in scaled integers or exact fractions until it is
written as decimal text through :mod:`engine.scale`; floats appear only in the ratios):

* **PnL.** The fills are replayed through :class:`engine.state.positions.Position` (average
  cost, the runtime's own PnL code), so ``realized`` is exact; ``unrealized`` values the open
  position at the *last mark* (the last mid the replay sampled, else the last fill price);
  ``net = realized + unrealized − fees``.  Decimal text of a fraction is floored to the
  counter asset's unit (each figure on its own, so they may differ from the net by a unit).
* **Fees, volume, fills.**  Fees are the counter fees the exchange core charged.  Volume in
  base and counter units.  ``fill_ratio = fills / orders placed`` (``orders_placed`` comes
  from the runtime summary; a partly filled order can count more than once, so
  ``filled_order_ratio`` = orders with at least one fill / orders placed is given too).
* **Max drawdown** from the equity marks (integer counter units): the largest fall of equity
  below its running peak, where the peak starts at 0 (a strategy starts flat, with no PnL).
* **Sharpe and Sortino** at a chosen interval: the equity marks are resampled to a grid of
  that step (the last mark at or before each grid time), returns are the PnL of each
  interval, and the ratios are annualised with ``sqrt(periods per year)``, a year being
  365 days of 24 h (crypto trades every day).  Returns are PnL in counter units, not
  percentages: with a constant capital base the ratio is the same either way.  Sortino
  divides by the downside deviation ``sqrt(mean(min(r, 0)²))`` (target 0).  Fewer than two
  intervals, or no dispersion, give ``None`` (``null`` in JSON): no figure rather than a
  made-up one.
* **Inventory**: time-weighted mean and mean absolute position over the marked span (the
  position is a step function that changes only at fills), and its extremes.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no global state, no
display), so they work in worker processes and threads.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from backtests.result import BacktestResult, FillRecord
from engine.errors import ConfigError
from engine.scale import DEFAULT, XBT_GBP, Market, Scales, format_price, market_by_name
from engine.state.positions import Position
from engine.strategy import Side

__all__ = [
    "DAYS_PER_YEAR",
    "InventoryStats",
    "Report",
    "StrategyMetrics",
    "build_report",
    "drawdown",
    "equity_returns",
    "inventory_stats",
    "parse_interval",
    "plot_report",
    "sharpe_sortino",
    "write_fills_csv",
    "write_html",
    "write_report",
]

DAYS_PER_YEAR = 365
"""Annualisation: crypto markets trade every day, so a year is 365 days of 24 hours."""

_YEAR_US = DAYS_PER_YEAR * 86_400 * 1_000_000
_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$")


def parse_interval(value: str | int | float) -> int:
    """An interval as microseconds: ``"15m"``, ``"1h"``, ``"1d"``, ``"30s"`` or plain seconds.

    >>> parse_interval("15m"), parse_interval(60)
    (900000000, 60000000)
    """
    if isinstance(value, bool):
        raise ConfigError(f"interval must be like '1h', '15m', '30s' or seconds, was {value!r}")
    if isinstance(value, int | float):
        us = round(value * 1_000_000)
    else:
        m = _INTERVAL.match(value)
        if m is None:
            raise ConfigError(f"interval {value!r} is not like '1h', '15m', '30s', '1d' or a number of seconds")
        us = round(float(m.group(1)) * _UNITS_US[m.group(2) or "s"])
    if us <= 0:
        raise ConfigError(f"interval must be positive, was {value!r}")
    return us


def _interval_text(us: int) -> str:
    for unit in ("d", "h", "m", "s", "ms"):
        if us % _UNITS_US[unit] == 0:
            return f"{us // _UNITS_US[unit]}{unit}"
    return f"{us}us"


# -- metrics (pure functions over arrays; floats only in the ratios) ------------------------


def drawdown(times: np.ndarray, equity: np.ndarray) -> tuple[int, int | None, int | None]:
    """(max drawdown, time of the peak, time of the trough) of an equity series.

    The running peak starts at 0: a strategy starts flat, so a first mark below zero is
    already a drawdown.  Times are ``None`` when there is no drawdown.
    """
    if len(equity) == 0:
        return (0, None, None)
    eq = equity.astype(np.int64)
    peak = np.maximum.accumulate(np.maximum(eq, 0))
    dd = peak - eq
    i = int(np.argmax(dd))
    worst = int(dd[i])
    if worst <= 0:
        return (0, None, None)
    # the peak is the last time equity stood at that running maximum before the trough
    before = np.nonzero(eq[: i + 1] == peak[i])[0]
    peak_time = int(times[before[-1]]) if len(before) else None  # None: the implicit start at 0
    return (worst, peak_time, int(times[i]))


def equity_returns(times: np.ndarray, equity: np.ndarray, interval_us: int) -> np.ndarray:
    """PnL per interval: equity resampled to a grid of ``interval_us`` from the first mark.

    The value at a grid time is the last mark at or before it (equity only moves at marks);
    the grid stops at the last grid time not after the last mark, so a partial interval at
    the end is left out rather than compared with full ones.
    """
    if len(times) == 0:
        return np.zeros(0, dtype=np.float64)
    t0, t1 = int(times[0]), int(times[-1])
    n = (t1 - t0) // interval_us
    grid = t0 + interval_us * np.arange(n + 1, dtype=np.int64)
    idx = np.searchsorted(times, grid, side="right") - 1
    values = equity[idx].astype(np.float64)
    return np.diff(values)


def sharpe_sortino(returns: np.ndarray, interval_us: int) -> tuple[float | None, float | None]:
    """Annualised (Sharpe, Sortino) of per-interval PnL (see the module docstring)."""
    if len(returns) < 2:
        return (None, None)
    scale = math.sqrt(_YEAR_US / interval_us)
    mean = float(np.mean(returns))
    sd = float(np.std(returns, ddof=1))
    sharpe = mean / sd * scale if sd > 0 else None
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    sortino = mean / downside * scale if downside > 0 else None
    return (sharpe, sortino)


@dataclass(frozen=True, slots=True)
class InventoryStats:
    """Position statistics in base units; the means are time-weighted over the marked span."""

    mean: float
    abs_mean: float
    max: int
    min: int
    final: int
    span_us: int


def inventory_stats(times: np.ndarray, position: np.ndarray) -> InventoryStats:
    """Time-weighted mean and mean |position| of a step function, plus its extremes.

    Each mark's position holds until the next mark; the last mark closes the span.  With a
    span of zero (a single instant) the plain mean is used.
    """
    if len(position) == 0:
        return InventoryStats(0.0, 0.0, 0, 0, 0, 0)
    pos = position.astype(np.float64)
    dt = np.diff(times).astype(np.float64)
    span = int(times[-1] - times[0])
    if span > 0:
        mean = float(np.dot(pos[:-1], dt) / span)
        abs_mean = float(np.dot(np.abs(pos[:-1]), dt) / span)
    else:
        mean, abs_mean = float(pos.mean()), float(np.abs(pos).mean())
    return InventoryStats(mean, abs_mean, int(position.max()), int(position.min()), int(position[-1]), span)


# -- the report ------------------------------------------------------------------------------


@dataclass(slots=True)
class StrategyMetrics:
    """Every figure of one strategy's report (money in scaled ints or exact fractions)."""

    name: str
    market: Market
    scales: Scales
    fills: int
    buys: int
    sells: int
    orders_placed: int | None
    filled_orders: int
    volume_base: int
    volume_counter: int
    fees: int
    realized: Fraction
    unrealized: Fraction
    mark_price: int | None
    max_drawdown: int
    drawdown_peak_us: int | None
    drawdown_trough_us: int | None
    sharpe: float | None
    sortino: float | None
    periods: int
    inventory: InventoryStats
    start_us: int | None
    end_us: int | None
    final_equity_mark: int | None

    @property
    def net(self) -> Fraction:
        return self.realized + self.unrealized - self.fees

    @property
    def fill_ratio(self) -> float | None:
        return self.fills / self.orders_placed if self.orders_placed else None

    @property
    def filled_order_ratio(self) -> float | None:
        return self.filled_orders / self.orders_placed if self.orders_placed else None

    def money(self, value: Fraction | int) -> str:
        """Counter-asset decimal text, floored to the asset's unit."""
        return self.scales.format_amount(math.floor(value), self.market.counter)

    def base(self, value: int) -> str:
        return self.scales.format_amount(value, self.market.base)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able figures: money as exact decimal text, ratios as floats (or null)."""
        inv = self.inventory
        unit = self.scales.amount_scale(self.market.base)
        return {
            "market": self.market.name,
            "net_pnl": self.money(self.net),
            "realized_pnl": self.money(self.realized),
            "unrealized_pnl": self.money(self.unrealized),
            "fees": self.money(self.fees),
            "mark_price": None if self.mark_price is None else format_price(self.mark_price, self.market),
            "fills": self.fills,
            "buys": self.buys,
            "sells": self.sells,
            "orders_placed": self.orders_placed,
            "filled_orders": self.filled_orders,
            "fill_ratio": self.fill_ratio,
            "filled_order_ratio": self.filled_order_ratio,
            "volume_base": self.base(self.volume_base),
            "volume_counter": self.money(self.volume_counter),
            "max_drawdown": self.money(self.max_drawdown),
            "max_drawdown_peak_us": self.drawdown_peak_us,
            "max_drawdown_trough_us": self.drawdown_trough_us,
            "sharpe": self.sharpe,
            "sortino": self.sortino,
            "return_periods": self.periods,
            "inventory": {
                "mean": inv.mean / unit,
                "abs_mean": inv.abs_mean / unit,
                "max": self.base(inv.max),
                "min": self.base(inv.min),
                "final": self.base(inv.final),
                "span_seconds": inv.span_us / 1e6,
            },
            "start_us": self.start_us,
            "end_us": self.end_us,
        }


@dataclass(slots=True)
class Report:
    """The report of one backtest: per-strategy metrics plus the run's identity."""

    result: BacktestResult
    interval_us: int
    strategies: dict[str, StrategyMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What ``summary.json`` holds."""
        r = self.result
        return {
            "config": r.config_path,
            "data": r.data_path,
            "seed": r.seed,
            "final_hash": r.final_hash,
            "events": r.events,
            "wall_seconds": r.wall_seconds,
            "events_per_second": r.events_per_second if r.wall_seconds > 0 else None,
            "interval": _interval_text(self.interval_us),
            "annualisation": f"sqrt({DAYS_PER_YEAR} d / interval)",
            "strategies": {name: m.to_dict() for name, m in self.strategies.items()},
            "replay": r.summary.get("replay"),
        }

    def table(self) -> str:
        """A plain-text summary table (one column per strategy) for the terminal."""
        rows: list[tuple[str, list[str]]] = []

        def row(label: str, fn: Any) -> None:
            rows.append((label, [fn(m) for m in self.strategies.values()]))

        def ratio(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        row("market", lambda m: m.market.name)
        row("net PnL", lambda m: m.money(m.net))
        row("  realized", lambda m: m.money(m.realized))
        row("  unrealized", lambda m: m.money(m.unrealized))
        row("  fees", lambda m: m.money(m.fees))
        row("fills (buy/sell)", lambda m: f"{m.fills} ({m.buys}/{m.sells})")
        row("orders placed", lambda m: "-" if m.orders_placed is None else str(m.orders_placed))
        row("fill ratio", lambda m: ratio(m.fill_ratio, "{:.1%}"))
        row("volume", lambda m: f"{m.base(m.volume_base)} {m.market.base}")
        row("max drawdown", lambda m: m.money(m.max_drawdown))
        row(f"Sharpe ({_interval_text(self.interval_us)}, ann.)", lambda m: ratio(m.sharpe))
        row(f"Sortino ({_interval_text(self.interval_us)}, ann.)", lambda m: ratio(m.sortino))
        row("inventory mean (tw)", lambda m: _float_base(m.inventory.mean, m))
        row("inventory |mean| (tw)", lambda m: _float_base(m.inventory.abs_mean, m))
        row("inventory min/max", lambda m: f"{m.base(m.inventory.min)} / {m.base(m.inventory.max)}")
        names = list(self.strategies)
        width0 = max(len(label) for label, _ in rows) if rows else 0
        widths = [max([len(n)] + [len(vals[i]) for _, vals in rows]) for i, n in enumerate(names)]
        lines = ["  ".join([" " * width0] + [n.rjust(w) for n, w in zip(names, widths, strict=True)])]
        lines.append("  ".join(["-" * width0] + ["-" * w for w in widths]))
        for label, vals in rows:
            lines.append("  ".join([label.ljust(width0)] + [v.rjust(w) for v, w in zip(vals, widths, strict=True)]))
        r = self.result
        foot = f"events {r.events:,}"
        if r.wall_seconds > 0:
            foot += f" in {r.wall_seconds:.2f} s ({r.events_per_second / 1e6:.2f} M/s)"
        lines.append(foot + f"; hash {r.final_hash[:16]}")
        return "\n".join(lines)


def _float_base(value: float, m: StrategyMetrics) -> str:
    digits = len(str(m.scales.amount_scale(m.market.base))) - 1
    return f"{value / m.scales.amount_scale(m.market.base):.{digits}f}"


def _scales_of(result: BacktestResult, scales: Scales | None) -> Scales:
    if scales is not None:
        return scales
    for where in (result.summary, result.summary.get("replay") or {}):
        api = where.get("api_version") if isinstance(where, Mapping) else None
        if api in (1, 2):
            return Scales(api)
    return DEFAULT


def _market_of(result: BacktestResult, name: str, markets: Mapping[str, Market] | None) -> Market:
    if markets and name in markets:
        return markets[name]
    info = (result.summary.get("strategies") or {}).get(name) or {}
    if "market" in info:
        return market_by_name(info["market"])
    return XBT_GBP


def build_report(
    result: BacktestResult,
    *,
    interval: str | int | float = "1h",
    scales: Scales | None = None,
    markets: Mapping[str, Market] | None = None,
) -> Report:
    """Compute every figure of the report (see the module docstring).

    ``scales`` and ``markets`` (strategy -> market) default to what the result's summary
    says (``api_version``, each strategy's ``market``), else API v2 and XBT:GBP.
    """
    interval_us = parse_interval(interval)
    sc = _scales_of(result, scales)
    report = Report(result, interval_us)
    names = list(result.strategies) or sorted({f.strategy for f in result.fills})
    by_strategy: dict[str, list[FillRecord]] = {n: [] for n in names}
    for f in result.fills:
        by_strategy.setdefault(f.strategy, []).append(f)
    for name, fills in by_strategy.items():
        market = _market_of(result, name, markets)
        report.strategies[name] = _metrics(result, name, fills, market, sc, interval_us)
    return report


def _metrics(result: BacktestResult, name: str, fills: list[FillRecord], market: Market, sc: Scales,
             interval_us: int) -> StrategyMetrics:
    pos = Position(market, sc)
    refs: set[int] = set()
    buys = 0
    for f in fills:
        side = Side(f.side)
        buys += side is Side.BUY
        pos.add(side, f.quantity, f.price, f.total, f.fee)
        refs.add(f.ref)
    if name in result.strategies and len(result.marks):
        marks = result.marks[result.marks["strategy"] == result.strategies.index(name)]
    else:
        marks = np.zeros(0, dtype=result.marks.dtype)
    times = marks["time_us"].astype(np.int64)
    mids = marks["mid"][marks["mid"] > 0]
    mark_price: int | None = int(mids[-1]) if len(mids) else (fills[-1].price if fills else None)
    unrealized = pos.unrealized(mark_price) if mark_price is not None and pos.base else Fraction(0)
    dd, dd_peak, dd_trough = drawdown(times, marks["equity"])
    returns = equity_returns(times, marks["equity"], interval_us)
    sharpe, sortino = sharpe_sortino(returns, interval_us)
    if len(marks):
        inv = inventory_stats(times, marks["position"])
    else:  # no marks: the fills alone (position after each fill)
        t = np.array([f.time_us for f in fills], dtype=np.int64)
        p = np.cumsum(np.array([f.side * f.quantity for f in fills], dtype=np.int64))
        inv = inventory_stats(t, p)
    info = (result.summary.get("strategies") or {}).get(name) or {}
    placed = info.get("orders_placed")
    return StrategyMetrics(
        name=name,
        market=market,
        scales=sc,
        fills=len(fills),
        buys=buys,
        sells=len(fills) - buys,
        orders_placed=int(placed) if isinstance(placed, int) else None,
        filled_orders=len(refs),
        volume_base=pos.volume_base,
        volume_counter=pos.volume_counter,
        fees=pos.fees,
        realized=pos.realized,
        unrealized=unrealized,
        mark_price=mark_price,
        max_drawdown=dd,
        drawdown_peak_us=dd_peak,
        drawdown_trough_us=dd_trough,
        sharpe=sharpe,
        sortino=sortino,
        periods=len(returns),
        inventory=inv,
        start_us=int(times[0]) if len(times) else (fills[0].time_us if fills else None),
        end_us=int(times[-1]) if len(times) else (fills[-1].time_us if fills else None),
        final_equity_mark=int(marks["equity"][-1]) if len(marks) else None,
    )


# -- files -------------------------------------------------------------------------------------

FILLS_CSV_HEADER = ("strategy", "ref", "time_us", "time_utc", "side", "price", "quantity", "total", "fee",
                    "position")


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_fills_csv(report: Report, path: str | Path) -> Path:
    """fills.csv: one row per fill, amounts as exact decimal text, the position after it."""
    p = Path(path)
    positions: dict[str, int] = {}
    with p.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(FILLS_CSV_HEADER)
        for f in report.result.fills:
            m = report.strategies[f.strategy]
            positions[f.strategy] = positions.get(f.strategy, 0) + f.side * f.quantity
            w.writerow((
                f.strategy, f.ref, f.time_us, _iso(f.time_us), "buy" if f.side > 0 else "sell",
                format_price(f.price, m.market), m.base(f.quantity), m.money(f.total), m.money(f.fee),
                m.base(positions[f.strategy]),
            ))
    return p


def _figure(nrows: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


def plot_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write price.png (mid with own fills), inventory.png and equity.png; returns their paths.

    The time axis is hours since the first mark.  Prices and amounts are divided by their
    scales for the axes only.
    """
    out = Path(out_dir)
    r = report.result
    metrics = list(report.strategies.values())
    t0 = _t0(report)
    hours = 3_600_000_000

    def strategy_marks(m: StrategyMetrics) -> np.ndarray:
        if m.name not in r.strategies or len(r.marks) == 0:
            return np.zeros(0, dtype=r.marks.dtype)
        return r.marks[r.marks["strategy"] == r.strategies.index(m.name)]

    paths: dict[str, Path] = {}
    # price: one panel per market, the mid from the marks and each strategy's fills on it
    markets: dict[str, list[StrategyMetrics]] = {}
    for m in metrics:
        markets.setdefault(m.market.name, []).append(m)
    fig, axes = _figure(max(1, len(markets)))
    for ax, (mname, ms) in zip(axes, markets.items(), strict=False):
        ps = ms[0].market.price_scale
        marks = strategy_marks(ms[0])
        ok = marks[marks["mid"] > 0]
        ax.plot((ok["time_us"] - t0) / hours, ok["mid"] / ps, lw=0.8, color="0.4", label="mid", drawstyle="steps-post")
        for m in ms:
            fl = [f for f in r.fills if f.strategy == m.name]
            for side, marker, color in ((1, "^", "tab:green"), (-1, "v", "tab:red")):
                xs = [(f.time_us - t0) / hours for f in fl if f.side == side]
                ys = [f.price / ps for f in fl if f.side == side]
                if xs:
                    ax.scatter(xs, ys, marker=marker, color=color, s=18, zorder=3,
                               label=f"{m.name} {'buys' if side > 0 else 'sells'}")
        ax.set_title(f"{mname}: mid and own fills")
        ax.set_ylabel(f"price ({ms[0].market.counter})")
        ax.set_xlabel("hours")
        ax.legend(loc="best", fontsize="small")
    paths["price"] = _save(fig, out / "price.png")

    for key, field_, title in (("inventory", "position", "position"), ("equity", "equity", "equity (net PnL)")):
        fig, (ax,) = _figure(1)
        for m in metrics:
            marks = strategy_marks(m)
            if key == "inventory":
                scale = m.scales.amount_scale(m.market.base)
                unit = str(m.market.base)
            else:
                scale = m.scales.amount_scale(m.market.counter)
                unit = str(m.market.counter)
            ax.plot((marks["time_us"] - t0) / hours, marks[field_] / scale, lw=0.9, drawstyle="steps-post",
                    label=f"{m.name} ({unit})")
        ax.axhline(0, color="0.7", lw=0.6)
        ax.set_title(title)
        ax.set_xlabel("hours")
        if metrics:
            ax.legend(loc="best", fontsize="small")
        paths[key] = _save(fig, out / f"{key}.png")
    return paths


def _t0(report: Report) -> int:
    r = report.result
    cands = [int(r.marks["time_us"].min())] if len(r.marks) else []
    cands += [f.time_us for f in r.fills[:1]]
    return min(cands) if cands else 0


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def write_html(report: Report, plots: Mapping[str, Path], path: str | Path) -> Path:
    """A self-contained report.html: the summary table and the plots inlined as PNG data."""
    d = report.to_dict()
    rows = []
    for name, s in d["strategies"].items():
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                        for k, v in s.items())
        rows.append(f"<h2>{html.escape(name)}</h2><table>{cells}</table>")
    imgs = []
    for key, p in plots.items():
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        imgs.append(f'<h2>{html.escape(key)}</h2><img alt="{html.escape(key)}" src="data:image/png;base64,{data}">')
    meta = {k: d[k] for k in ("config", "data", "seed", "events", "interval", "annualisation", "final_hash")}
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>cftrade backtest report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Backtest report</h1><pre>{html.escape(json.dumps(meta, indent=1))}</pre>"
        f"<pre>{html.escape(report.table())}</pre>{''.join(rows)}{''.join(imgs)}</body></html>"
    )
    out = Path(path)
    out.write_text(doc)
    return out


def write_report(
    result: BacktestResult,
    out_dir: str | Path,
    *,
    interval: str | int | float = "1h",
    plots: bool = True,
    html_report: bool = True,
    scales: Scales | None = None,
    markets: Mapping[str, Market] | None = None,
) -> Report:
    """Write summary.json, fills.csv and (optionally) the PNG plots and report.html to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(result, interval=interval, scales=scales, markets=markets)
    (out / "summary.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n")
    write_fills_csv(report, out / "fills.csv")
    if plots:
        pngs = plot_report(report, out)
        if html_report:
            write_html(report, pngs, out / "report.html")
    return report


def summary_row(report: Report, strategies: Sequence[str] | None = None) -> dict[str, Any]:
    """Flat figures of a report for tables of many runs (sweeps): floats and ints only.

    Money is converted to float counter units here, at the reporting edge, so runs can be
    ranked and averaged; exact text stays in summary.json.
    """
    out: dict[str, Any] = {}
    for name, m in report.strategies.items():
        if strategies is not None and name not in strategies:
            continue
        cs = m.scales.amount_scale(m.market.counter)
        bs = m.scales.amount_scale(m.market.base)
        out[name] = {
            "net_pnl": float(m.net) / cs,
            "realized_pnl": float(m.realized) / cs,
            "unrealized_pnl": float(m.unrealized) / cs,
            "fees": m.fees / cs,
            "volume": m.volume_base / bs,
            "fills": m.fills,
            "fill_ratio": m.fill_ratio,
            "max_drawdown": m.max_drawdown / cs,
            "sharpe": m.sharpe,
            "sortino": m.sortino,
            "inventory_abs_mean": m.inventory.abs_mean / bs,
        }
    return out
