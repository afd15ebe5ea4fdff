"""Build the demo's starter model from simulated history.

    python -m appliance.training.starter --out appliance/models/starter.onnx \
        [--assets 10 --days 3 --seed 7]

Simulates the line in memory with ``appliance.devtools.simulator``, computes features
with the default pipeline spec (``PipelineConfig()``), trains with
``appliance.training.fit`` and writes an ONNX file that follows
``models/README.md``.  The same arguments give the same model (only the
``created_at`` metadata changes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.config import PipelineConfig
from appliance.devtools.simulator import History, simulate_history
from appliance.features.spec import PipelineSpec
from appliance.storage.history import AssetHistory
from appliance.training.families import TrainParams
from appliance.training.fit import train, write


def histories_of(hist: History) -> list[AssetHistory]:
    """A simulated history as the per-asset input of ``train``."""
    out = []
    for asset in hist.assets:
        starts, ends = hist.fault_times(asset)
        out.append(AssetHistory(asset, hist.series(asset), starts, ends))
    return out


def build_starter(out: str | Path, assets: int = 10, days: float = 3.0, seed: int = 7,
                  hz: float = 0.1, stride: int = 2, verbose: bool = True) -> dict[str, object]:
    """Simulate, train and write the starter model; return a summary.

    ``stride`` 2 trains on every other tick (20 s apart at the default cadence):
    neighbouring ticks share most of their windows, so this halves the fit time
    and loses little.
    """
    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.perf_counter() - t_all:6.1f}s] {msg}", file=sys.stderr, flush=True)

    t_all = time.perf_counter()
    spec = PipelineSpec.from_config(PipelineConfig())
    say(f"simulating {assets} assets × {days:g} days at {hz:g} Hz (seed {seed})")
    hist = simulate_history(days, assets, hz, seed)
    t_sim = time.perf_counter() - t_all
    say(f"{hist.n_readings} readings, {len(hist.faults)} faults")
    result = train(spec, histories_of(hist), hist.t_start, hist.t_end,
                   TrainParams(seed=seed, stride=stride), progress=say if verbose else None)
    loaded, agreement = write(result, out)
    total = time.perf_counter() - t_all
    v = result.validation
    summary: dict[str, object] = {
        "path": str(loaded.path), "name": loaded.name, "sha256": loaded.sha256,
        "bytes": loaded.path.stat().st_size, "spec_hash": loaded.spec_hash,
        "features": len(loaded.feature_names), "dropped": len(result.dropped),
        "threshold": round(loaded.threshold, 4),
        "threshold_met_budget": result.threshold_met_budget,
        "validation": v.as_dict(), "onnx_check": agreement,
        "seconds": {"simulate": round(t_sim, 1),
                    **{k: round(x, 1) for k, x in result.timings.items()},
                    "total": round(total, 1)},
    }
    say(f"wrote {loaded.path} ({summary['bytes']} bytes, {loaded.name})")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.training.starter",
                                 description="Build the starter ONNX model from simulated "
                                             "history.")
    ap.add_argument("--out", required=True, help="where to write the .onnx file")
    ap.add_argument("--assets", type=int, default=10, help="simulated assets (default 10)")
    ap.add_argument("--days", type=float, default=3.0, help="days of history (default 3)")
    ap.add_argument("--seed", type=int, default=7, help="simulator and model seed (default 7)")
    ap.add_argument("--hz", type=float, default=0.1,
                    help="simulated readings per sensor per second (default 0.1)")
    ap.add_argument("--stride", type=int, default=2,
                    help="use every n-th tick for training and validation (default 2)")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)
    if args.assets < 1 or args.days <= 0 or args.hz <= 0 or args.stride < 1:
        ap.error("--assets, --days, --hz and --stride must be positive")
    try:
        s = build_starter(args.out, args.assets, args.days, args.seed, args.hz, args.stride,
                          verbose=not args.quiet)
    except ValueError as exc:
        print(f"starter: {exc}", file=sys.stderr)
        return 1
    v = s["validation"]
    assert isinstance(v, dict)
    lead = v["median_lead_s"]
    print(f"{s['path']}: {s['name']}, {s['features']} features ({s['dropped']} dropped), "
          f"threshold {s['threshold']}\n"
          f"validation: recall {v['recall']} ({v['caught']}/{v['faults']} faults), "
          f"{v['false_per_asset_week']} false alarms per asset-week "
          f"({v['false_episodes']} in {v['asset_weeks']} asset-weeks), "
          f"median lead {'-' if lead is None else f'{lead / 60:.0f} min'}, "
          f"PR-AUC {v['pr_auc']}\n"
          f"onnx check: {s['onnx_check']}\n"
          f"seconds: {s['seconds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
