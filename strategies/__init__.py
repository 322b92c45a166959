"""Shipped strategies; importing this package registers them by name (engine.registry).

| name             | class                          | what it does                                    |
|------------------|--------------------------------|-------------------------------------------------|
| market_maker     | market_maker.MarketMaker       | inventory-skewed two-sided quoting (A-S style)  |
| twap             | twap.Twap                      | TWAP / iceberg execution of a target quantity   |
| grid             | grid.Grid                      | static grid, flipped on fills                   |
| mean_reversion   | mean_reversion.MeanReversion   | EMA mean-reversion (or trend) market taker      |
"""

from strategies import grid, market_maker, mean_reversion, twap

__all__ = ["grid", "market_maker", "mean_reversion", "twap"]
