"""The risk governor: pre-trade checks, trading states (ACTIVE/REDUCING/HALTED), kill switch.

Map: ``model`` holds the inputs (limits, market view, states); ``checks`` judges one intent
with pure functions; ``statefile`` persists HALTED/REDUCING atomically; ``governor`` ties them
together with per-strategy and per-user order budgets and the kill switch.

    gov = RiskGovernor(UserRiskLimits(), state_path=Path("state/risk.json"), now=trio.current_time)
    gov.add_strategy("mm", RiskLimits(max_order_quantity=10**8, price_band_bps=500))
    denial = gov.check("mm", intent, MarketView(best_bid=..., best_ask=..., ...), XBT_GBP)
    if denial is None: send(intent)  else: strategy.on_risk_denied(ctx, denial)
"""

from engine.risk.checks import Refusal, pre_trade, token_cost
from engine.risk.governor import RiskGovernor, RiskStatistics, StrategyRiskStatistics
from engine.risk.model import RULES, MarketView, RiskLimits, TradingState, UserRiskLimits
from engine.risk.statefile import STATE_FORMAT, StateRecord, load_states, save_states

__all__ = [
    "RULES",
    "STATE_FORMAT",
    "MarketView",
    "Refusal",
    "RiskGovernor",
    "RiskLimits",
    "RiskStatistics",
    "StateRecord",
    "StrategyRiskStatistics",
    "TradingState",
    "UserRiskLimits",
    "load_states",
    "pre_trade",
    "save_states",
    "token_cost",
]
