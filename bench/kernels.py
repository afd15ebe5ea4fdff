"""Run the kernel benchmark directly: ``python bench/kernels.py [--json] [--n N]``."""

from __future__ import annotations

import argparse
import sys

from appliance.benchmarks.kernels import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.add_argument("--n", type=int, default=1_000_000, help="samples per series")
    args = parser.parse_args(argv)
    return run(json_output=args.json, n=args.n)


if __name__ == "__main__":
    sys.exit(main())
