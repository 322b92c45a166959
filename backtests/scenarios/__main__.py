"""``python -m backtests.scenarios``: regenerate, replay and compare the example scenarios."""

from backtests.scenarios import main

raise SystemExit(main())
