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


# Relative noise of a linear 14-size sweep (fixed so the test is deterministic): the old fit
# (two-point pieces, no noise floor) split this straight line into 5 pieces.
_NOISE = [-0.029, -0.024, 0.038, -0.049, 0.012, 0.027, -0.037, -0.053, -0.027, 0.019, 0.007,
          -0.042, -0.008, 0.02]


def test_noisy_linear_sweep_gets_one_piece():
    sizes = [1 << k for k in range(10, 24)]
    t = [(30 + s / 2e3) * (1 + e) for s, e in zip(sizes, _NOISE)]
    df = pd.DataFrame(dict(collective="all_reduce", nranks=2, bytes=sizes, time_us=t,
                           library="gloo"))
    f = CostModel.fit(df).fits[("all_reduce", 2, 1, "gloo")]
    assert len(f.alpha) == 1 and f.starts == [0]
    assert f.alpha[0] == pytest.approx(30, rel=0.05) and f.beta[0] == pytest.approx(1 / 2e3,
                                                                                     rel=0.05)


def test_alpha_never_negative_and_pieces_have_three_sizes():
    # A convex curve: every chord has a negative intercept (the old fit gave alphas down to
    # -3392 us through two-point pieces).
    sizes = [1 << k for k in range(10, 20)]
    t = [1 + (s / 1024) ** 1.5 for s in sizes]
    m = CostModel.fit(pd.DataFrame(dict(collective="all_reduce", nranks=2, bytes=sizes,
                                        time_us=t, library="gloo")))
    f = m.fits[("all_reduce", 2, 1, "gloo")]
    assert min(f.alpha) >= 0 and min(f.beta) >= 0
    assert all(b - a >= 3 for a, b in zip(f.starts, f.starts[1:] + [len(f.sizes)]))
    with pytest.raises(ValueError, match="min_points"):
        CostModel.fit(_synthetic(), min_points=1)


def test_calibration_json_keeps_per_piece_lists(tmp_path):
    m = CostModel.fit(_synthetic())
    m.save(tmp_path / "c.json")
    import json

    c = json.loads((tmp_path / "c.json").read_text())["curves"][0]
    assert c["alpha_us"] == pytest.approx([10, 25]) and len(c["beta_us_per_byte"]) == 2
    assert c["provenance"]["sources"] == ["synthetic"] and c["provenance"]["rows"] == 69


def test_libraries_are_never_mixed(tmp_path):
    gloo = _synthetic().assign(library="gloo", time_us=lambda d: d["time_us"] * 10)
    both = pd.concat([_synthetic(), gloo])
    m = CostModel.fit(both)
    assert m.libraries == ["gloo", "nccl"]
    with pytest.raises(ValueError, match="several libraries"):
        m.predict("all_reduce", 4, 1 << 20)
    nccl = m.predict("all_reduce", 4, 1 << 26, library="nccl")
    assert nccl == pytest.approx(25 + (1 << 26) / 200e3)
    assert m.predict("all_reduce", 4, 1 << 26, library="gloo") == pytest.approx(10 * nccl)
    assert m.select("gloo").predict("all_reduce", 4, 1 << 26) == pytest.approx(10 * nccl)
    m.save(tmp_path / "c.json")
    assert CostModel.load(tmp_path / "c.json", library="nccl").predict(
        "all_reduce", 4, 1 << 26) == pytest.approx(nccl)
    with pytest.raises(KeyError, match="no curves for library 'mpi'"):
        m.select("mpi")


def test_schedule_warnings_reach_the_user_once_per_curve():
    # Measured only from 1 MiB up: decode all_reduces (16 KiB) are extrapolated.
    data = _synthetic()
    m = CostModel.fit(data[data["bytes"] >= 1 << 20])
    model = analysis.ModelSpec.from_preset("Llama-3-70B")
    wl = analysis.Workload(batch=1, prompt_len=512, output_len=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = analysis.predict_schedule(model, wl, analysis.ParallelConfig(tp=4), m)
        analysis.predict_schedule(model, wl, analysis.ParallelConfig(tp=4), m)
    cm = [w for w in caught if issubclass(w.category, CostModelWarning)]
    assert len(cm) == 1, [str(w.message) for w in cm]
    assert "all_reduce on 4 ranks (nccl)" in str(cm[0].message)
    assert "outside the measured range" in str(cm[0].message)
    decode = s[(s["phase"] == "decode") & (s["op"] == "all_reduce")]
    assert len(decode) and (decode["bytes"] < (1 << 19)).all()


@pytest.mark.skipif(not glob.glob(os.path.join(SHARED, "*.parquet")),
                    reason="../shared/data/calibration absent")
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(SHARED, "*.parquet"))),
                         ids=lambda p: os.path.basename(p).split("-nccl-")[-1])
def test_heldout_error_on_real_nccl_measurements(path):
    m = analysis.load_measurements(path)
    assert set(m["source"]) == {"aiconfigurator"} and set(m["time_basis"]) == {"device"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CostModelWarning)
        h = CostModel.holdout(m, k=2)
    err = h["rel_error"].abs() * 100
    print(f"{os.path.basename(path)}: {len(h)} held-out sizes, median {err.median():.2f} %, "
          f"p90 {err.quantile(0.9):.2f} %, max {err.max():.1f} %")
    assert len(h) > 150
    # Measured on these files (every second size held out): median 2.6-3.9 %, p90 9.5-15.3 %.
    # The aim is <= 2 % / <= 10 %; the small-size plateau is noisier than that.
    assert err.median() <= 4.5
    assert err.quantile(0.9) <= 16
