"""Cost models: recovering known constants, held-out error on real NCCL data, persistence."""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from commscope import analysis
from commscope.analysis import CostModel, CostModelWarning

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "calibration")


def _synthetic(op="all_reduce", n=4, noise=0.0, seed=0):
    """Two regimes with a knee at 1 MiB: 10 us + S/50 GB/s below, 25 us + S/200 GB/s above."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in [2**k for k in range(8, 31)]:
        t = 10 + s / 50e3 if s < (1 << 20) else 25 + s / 200e3
        for _ in range(3):
            rows.append(dict(collective=op, nranks=n, nodes=1, dtype="bfloat16", bytes=s,
                             time_us=t * (1 + noise * rng.standard_normal()), library="nccl",
                             source="synthetic"))
    return pd.DataFrame(rows)


def test_fit_recovers_known_constants():
    m = CostModel.fit(_synthetic())
    f = m.fits[("all_reduce", 4, 1, "nccl")]
    assert len(f.alpha) == 2  # the knee is found
    assert f.alpha[0] == pytest.approx(10, rel=1e-6) and f.beta[0] == pytest.approx(1 / 50e3)
    assert f.alpha[1] == pytest.approx(25, rel=1e-6) and f.beta[1] == pytest.approx(1 / 200e3)
    assert m.predict("all_reduce", 4, 1 << 26) == pytest.approx(25 + (1 << 26) / 200e3)
    q = m.quality
    assert set(q.columns) >= {"mape_pct", "bias_pct", "p90_pct", "max_pct", "regime"}
    assert (q["max_pct"] < 1e-6).all()


def test_noisy_fit_is_close_and_reports_uncertainty():
    m = CostModel.fit(_synthetic(noise=0.03))
    assert m.predict("all_reduce", 4, 1 << 28) == pytest.approx(25 + (1 << 28) / 200e3, rel=0.05)
    assert 0.005 < m.uncertainty("all_reduce", 4, 1 << 28) < 0.1


def test_unmeasured_group_size_uses_latency_model_with_warning():
    data = pd.concat([_synthetic(n=2), _synthetic(n=4), _synthetic(n=8)])
    m = CostModel.fit(data)
    a0, a_hop = m.latency[("all_reduce", 1, "nccl")]
    assert a_hop == pytest.approx(0, abs=1e-6) and a0 == pytest.approx(10, rel=1e-3)
    with pytest.warns(CostModelWarning, match="not measured"):
        t = m.predict("all_reduce", 16, 1 << 12)
    assert t == pytest.approx(10 + (1 << 12) / 50e3 * (2 * 15 / 16) / (2 * 7 / 8), rel=0.05)
    with pytest.warns(CostModelWarning, match="outside the measured range"):
        m.predict("all_reduce", 4, 1 << 33)
    with pytest.raises(KeyError, match="no measurements"):
        m.predict("broadcast", 4, 1024)


def test_save_load_roundtrip(tmp_path):
    m = CostModel.fit(_synthetic())
    m.save(tmp_path / "cal.json")
    m2 = CostModel.load(tmp_path / "cal.json")
    for s in (300, 1 << 20, 1 << 29):
        assert m2.predict("all_reduce", 4, s) == m.predict("all_reduce", 4, s)
    assert m2.provenance["sources"] == ["synthetic"] and "quality" in m2.provenance
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a commscope cost model"):
        CostModel.load(tmp_path / "bad.json")


def test_load_measurements_from_csv_and_errors(tmp_path):
    df = _synthetic()
    df.to_csv(tmp_path / "m.csv", index=False)
    m = analysis.load_measurements(tmp_path / "m.csv")
    assert len(m) == len(df) and list(m.columns)[:6] == ["collective", "nranks", "nodes",
                                                         "dtype", "bytes", "time_us"]
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="not a measurements table"):
        analysis.load_measurements(tmp_path / "bad.csv")


@pytest.mark.skipif(not glob.glob(os.path.join(SHARED, "*.parquet")),
                    reason="../shared/data/calibration absent")
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(SHARED, "*.parquet"))),
                         ids=lambda p: os.path.basename(p).split("-nccl-")[-1])
def test_heldout_error_on_real_nccl_measurements(path):
    m = analysis.load_measurements(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CostModelWarning)
        h = CostModel.holdout(m, k=2)
    err = h["rel_error"].abs()
    assert len(h) > 100
    assert err.median() <= 0.05
    assert err.quantile(0.9) <= 0.15
