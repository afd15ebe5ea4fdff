"""Run the import / training / backtest benchmark: ``python bench/train.py [--help]``."""

from __future__ import annotations

import sys

from appliance.benchmarks.train import main

if __name__ == "__main__":
    sys.exit(main())
