"""Thinned training rows: every positive and validation row kept, negatives weighted back."""

from __future__ import annotations

import dataclasses

import duckdb
import numpy as np
import pytest

from appliance.config import PipelineConfig, TrainingConfig, from_dict
from appliance.devtools.simulator import simulate_history
from appliance.features.batch import asset_features, asset_ticks
from appliance.features.spec import PipelineSpec
from appliance.storage.database import release_buffers
from appliance.training import export, families, starter
from appliance.training.dataset import (
    build_dataset,
    negative_step,
    split_time,
    thin_negatives,
    thin_training_rows,
)
from appliance.training.families import TrainParams
from appliance.training.fit import fit, train

SPEC = PipelineSpec.from_config(PipelineConfig())
FRACTION = 0.75
STRIDE = 3
CAP = 6_000


@pytest.fixture(scope="module")
def sim():
    return simulate_history(days=2, assets=6, hz=0.1, seed=21)


@pytest.fixture(scope="module")
def both(sim):
    """The data set built whole and built thinned (at CAP training rows)."""
    hists = starter.histories_of(sim)
    full = build_dataset(SPEC, hists, sim.t_start, sim.t_end, stride=STRIDE)
    thin = build_dataset(SPEC, hists, sim.t_start, sim.t_end, stride=STRIDE,
                         train_fraction=FRACTION, max_train_rows=CAP)
    return full, thin


def test_thin_negatives_by_hand():
    pos = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)  # 7 negatives
    keep, weight = thin_negatives(pos, 3)
    # negatives ranked 0..6 at rows 0 1 4 5 6 8 9: ranks 0, 3, 6 kept (rows 0, 5, 9)
    assert np.flatnonzero(keep).tolist() == [0, 2, 3, 5, 7, 9]
    assert weight.tolist() == [7 / 3, 1, 1, 7 / 3, 1, 7 / 3]
    assert weight[~pos[keep]].sum() == pytest.approx(7)
    keep1, weight1 = thin_negatives(pos, 1)
    assert keep1.all() and (weight1 == 1).all()


@pytest.mark.parametrize("negatives, positives, cap, expected", [
    ([100, 100], 10, 1000, 1),  # small: everything kept
    ([100, 100], 10, 210, 1),  # exactly at the cap
    ([100, 100], 10, 110, 2),  # 50 + 50 + 10
    ([101, 100], 10, 110, 3),  # 2 would keep 51 + 50 + 10
    ([1000], 900, 1000, 2),  # positives take most of the cap: negatives get half of it
])
def test_negative_step_is_the_smallest_within_the_cap(negatives, positives, cap, expected):
    k = negative_step(positives, negatives, cap)
    assert k == expected, (negatives, positives, cap)
    room = max(cap - positives, cap // 2)
    assert sum(-(-n // k) for n in negatives) <= (room if k > 1 else cap)
    if k > 1:
        assert sum(-(-n // (k - 1)) for n in negatives) > room


def test_thinning_keeps_every_positive_and_validation_row(both):
    full, thin = both
    th = thin.thinning
    assert th is not None and th.step > 1
    t_split = split_time(full.ticks, th.t_start, th.t_end, FRACTION)
    assert th.train_until == t_split
    # after the split (the gap and validation): the same rows, in the same order
    after_f, after_t = full.ticks > t_split, thin.ticks > t_split
    for a in ("ticks", "asset_index", "positive", "usable"):
        assert np.array_equal(getattr(full, a)[after_f], getattr(thin, a)[after_t]), a
    assert np.array_equal(full.X[after_f], thin.X[after_t], equal_nan=True)
    assert (thin.weight[after_t] == 1).all()
    # up to it: only usable rows, every positive, at most CAP
    train_f = (full.ticks <= t_split) & full.usable
    train_t = thin.ticks <= t_split
    assert thin.usable[train_t].all()
    assert train_t.sum() <= CAP < train_f.sum()
    for i in range(len(full.assets)):
        pos_f = full.ticks[train_f & full.positive & (full.asset_index == i)]
        pos_t = thin.ticks[train_t & thin.positive & (thin.asset_index == i)]
        assert np.array_equal(pos_f, pos_t), full.assets[i]
        # the weights give back the asset's count of negatives
        neg_f = train_f & ~full.positive & (full.asset_index == i)
        neg_t = train_t & ~thin.positive & (thin.asset_index == i)
        assert thin.weight[neg_t].sum() == pytest.approx(neg_f.sum()), full.assets[i]
        assert neg_t.sum() == -(-neg_f.sum() // th.step)
    assert (thin.weight[train_t & thin.positive] == 1).all()


def test_thinned_rows_are_the_full_rows_features(both):
    full, thin = both
    key_f = {(int(a), float(t)): j for j, (a, t) in enumerate(zip(full.asset_index,
                                                                  full.ticks, strict=True))}
    rows = np.array([key_f[(int(a), float(t))]
                     for a, t in zip(thin.asset_index, thin.ticks, strict=True)])
    assert np.array_equal(full.X[rows], thin.X, equal_nan=True)


def test_fit_thins_a_whole_data_set_as_the_build_does(sim, both):
    """The backtest's path (built whole, thinned in fit) and train's (thinned while
    built) fit the same rows with the same weights, so the same model."""
    full, thin = both
    params = TrainParams(max_iter=20, train_fraction=FRACTION, max_train_rows=CAP, seed=21)
    a = fit(full, SPEC, sim.t_start, sim.t_end, params)
    b = fit(thin, SPEC, sim.t_start, sim.t_end, params)
    assert a.trained_to == b.trained_to
    assert a.metrics["rows"] == b.metrics["rows"]
    assert a.metrics["rows"]["train_negative_step"] == thin.thinning.step
    assert a.threshold == b.threshold and a.validation == b.validation
    assert np.array_equal(a.classifier.predict_proba(a.X_validation.astype(np.float64)),
                          b.classifier.predict_proba(b.X_validation.astype(np.float64)))
    assert a.reference == b.reference


def test_a_model_trained_on_thinned_rows_finds_the_faults(sim):
    params = TrainParams(max_iter=40, stride=STRIDE, max_train_rows=CAP, seed=21)
    result = train(SPEC, starter.histories_of(sim), sim.t_start, sim.t_end, params)
    rows = result.metrics["rows"]
    assert rows["train"] <= CAP and rows["train_negative_step"] > 1
    assert rows["train_weighted"] > rows["train"]
    v = result.validation
    assert v.faults >= 2 and v.recall >= 0.5 and v.pr_auc > 0.5
    if result.threshold_met_budget:
        assert v.false_per_asset_week <= params.max_false_per_asset_week
    assert result.drift_calibration is not None


def test_a_thinned_data_set_is_fitted_only_with_its_own_split(sim, both):
    _full, thin = both
    other = TrainParams(max_iter=5, train_fraction=0.6, max_train_rows=CAP)
    with pytest.raises(ValueError, match="thinned"):
        fit(thin, SPEC, sim.t_start, sim.t_end, other)
    with pytest.raises(ValueError, match="stride"):
        thin.stride(SPEC, 2)
    with pytest.raises(ValueError, match="train_fraction"):
        build_dataset(SPEC, starter.histories_of(sim)[:1], sim.t_start, sim.t_end,
                      max_train_rows=CAP)


def test_thin_training_rows_under_the_cap_keeps_all_with_weight_one():
    rng = np.random.default_rng(5)
    idx = np.repeat([0, 1], 50)
    pos = rng.random(100) < 0.1
    keep, weight, step = thin_training_rows(idx, pos, 100)
    assert step == 1 and keep.all() and (weight == 1).all()
    keep, weight, step = thin_training_rows(idx, pos, 40)
    assert step > 1 and keep[pos].all() and keep.sum() <= 40
    assert weight[~pos[keep]].sum() == pytest.approx((~pos).sum())


def test_asset_ticks_are_the_ticks_of_asset_features(sim):
    series = sim.series(sim.assets[0])
    # a silence longer than idle_gap_s: two stretches, each with its warm-up
    cut = {s: (ts[(ts < sim.t_start + 6 * 3600) | (ts > sim.t_start + 14 * 3600)],
               v[(ts < sim.t_start + 6 * 3600) | (ts > sim.t_start + 14 * 3600)])
           for s, (ts, v) in series.items()}
    for s in (series, cut):
        for lo, hi in ((sim.t_start, sim.t_end), (sim.t_start + 3 * 3600, sim.t_start + 9e4)):
            _names, ticks, _X = asset_features(SPEC, s, lo, hi)
            assert np.array_equal(asset_ticks(SPEC, s, lo, hi), ticks)


def test_weighted_reference_is_that_of_the_repeated_rows():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(200, 2))
    X[::7, 1] = np.nan
    w = rng.integers(1, 4, size=200)
    ref_w = export.reference_distribution(X, ["a", "b"], weight=w.astype(np.float64))
    repeated = np.repeat(X, w, axis=0)
    for j, name in enumerate(["a", "b"]):
        col = repeated[:, j]
        v = col[np.isfinite(col)]
        r = ref_w[name]
        assert r["count"] == len(v)
        assert r["missing"] == pytest.approx(1 - len(v) / len(col), abs=1e-6)
        assert r["mean"] == pytest.approx(v.mean(), rel=1e-5)
        assert r["std"] == pytest.approx(v.std(), rel=1e-5)
        assert r["median"] == pytest.approx(np.quantile(v, 0.5, method="inverted_cdf"),
                                            rel=1e-5)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, 11), method="inverted_cdf"))
        assert r["hist_counts"] == np.histogram(v, bins=edges)[0].tolist()


def test_max_train_rows_from_the_config():
    assert TrainingConfig().max_train_rows == TrainParams().max_train_rows == 200_000
    cfg = from_dict({"training": {"max_train_rows": 50_000}}, source="<test>")
    params = TrainParams.from_settings("gbt", cfg.training, 1.0, 0.5)
    assert params.max_train_rows == 50_000
    with pytest.raises(ValueError, match="max_train_rows"):
        from_dict({"training": {"max_train_rows": 10}}, source="<test>")
    with pytest.raises(ValueError):
        dataclasses.replace(TrainParams(), max_train_rows=0)


def test_binning_workaround_leaves_scikit_learn_as_it_was():
    from sklearn.ensemble._hist_gradient_boosting import binning

    before = binning._find_binning_thresholds
    with families._unweighted_binning():
        assert binning._find_binning_thresholds is not before
        col = np.arange(1000.0)
        weighted = binning._find_binning_thresholds(col, 255, sample_weight=np.ones(1000))
        assert np.array_equal(weighted, before(col, 255))
    assert binning._find_binning_thresholds is before


def test_release_buffers_keeps_the_memory_limit(tmp_path):
    con = duckdb.connect(str(tmp_path / "x.duckdb"), config={"memory_limit": "300MB"})
    try:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        con.execute("CREATE TABLE t AS SELECT range AS i FROM range(100000)")
        assert con.execute("SELECT sum(i) FROM t").fetchone()[0] == 4999950000
        release_buffers(con, "300MB")
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == limit
        assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 100000
    finally:
        con.close()
