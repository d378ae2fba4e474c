"""2D tensor parallelism: the TP2D layout, the real 2D-TP decoder on gloo against the predicted
schedule, and the AsymGroup-style advisor against hand derivations."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction

import pandas as pd
import pytest

from commscope import analysis
from commscope.analysis import TP2D, CostModel, ModelSpec, Workload, advise_tp2d
from commscope.cli import main as cli_main

W = Workload(batch=2, prompt_len=16, output_len=8)


# -- layout --------------------------------------------------------------------------------------
def test_layout_even_and_uneven():
    g = TP2D.grid(2, 2)
    assert (g.rows, g.cols, g.row_ranks) == ((2, 2), (2, 2), [(0, 1), (2, 3)])
    assert [s[2] for s in g.segments] == [(0, 2), (1, 3)]
    # Rows (2, 1): rank 2 is alone in its row group and owns the whole hidden dim, so it is
    # in both column groups (one per half of the hidden dim).
    u = TP2D((2, 1))
    assert u.cols == (2, 2)
    assert u.segments == [(Fraction(0), Fraction(1, 2), (0, 2)), (Fraction(1, 2), Fraction(1), (1, 2))]
    assert [u.hidden_slice(r, 64) for r in range(3)] == [(0, 32), (32, 64), (0, 64)]
    # Rows (4, 2): quarters owned by (0..3) x (4, 4, 5, 5).
    assert [s[2] for s in TP2D((4, 2)).segments] == [(0, 4), (1, 4), (2, 5), (3, 5)]
    assert TP2D.grid(1, 3).cols == (1, 1, 1) and TP2D.grid(3, 1).cols == (3,)
    with pytest.raises(ValueError, match=r"give column groups \[2, 2, 2, 2\]"):
        TP2D((4, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        TP2D((2, 0))


def test_schedule_uneven_hand_derived():
    # tiny model: h=64, L=4, b=8; rows (2, 1) on 3 ranks; decode T=2, prefill T=32.
    m = ModelSpec("tiny", 64, 4, 4, 2, 128, 256, dtype_bytes=8)
    s = analysis.predict_schedule(m, W, analysis.ParallelConfig(tp2d=TP2D((2, 1))))
    got = {(r.phase, r.op, r.pg_dim, r.pg_size, r.bytes): r.count for r in s.itertuples()}
    # Per sublayer (8 per step): ranks 0, 1 reduce_scatter + all_gather T*h*b in their row group
    # (2 of 3 ranks); ranks 0 and 1 all_reduce one half, rank 2 both halves: 4 calls / 3 ranks.
    assert got == pytest.approx({
        ("prefill", "reduce_scatter", "tp_row", 2, 32 * 64 * 8): 8 * 2 / 3,
        ("prefill", "all_gather", "tp_row", 2, 32 * 64 * 8): 8 * 2 / 3,
        ("prefill", "all_reduce", "tp_col", 2, 32 * 32 * 8): 8 * 4 / 3,
        ("decode", "reduce_scatter", "tp_row", 2, 2 * 64 * 8): 8 * 2 / 3,
        ("decode", "all_gather", "tp_row", 2, 2 * 64 * 8): 8 * 2 / 3,
        ("decode", "all_reduce", "tp_col", 2, 2 * 32 * 8): 8 * 4 / 3,
    })


# -- the real 2D-TP decoder on gloo -----------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    from commscope.models import llama

    return llama.run(1, 1, batch=W.batch, prompt=W.prompt_len, output=W.output_len)[1]


@pytest.mark.parametrize("rows, split, shares", [
    ((2, 2), None, [32 / 128] * 4),
    # Work by capability 2:2:1: MLP columns 51.2, 51.2, 25.6 -> largest remainder 51, 51, 26.
    ((2, 1), [2.0, 2.0, 1.0], [51 / 128, 51 / 128, 26 / 128]),
])
def test_2d_tp_same_tokens_and_exact_compare(tmp_path, reference, rows, split, shares):
    from commscope.models import llama2d

    run_dir, tokens = llama2d.run(rows, out=str(tmp_path), split=split, batch=W.batch,
                                  prompt=W.prompt_len, output=W.output_len)
    assert tokens == reference
    ev = analysis.load_events(run_dir)
    layout = TP2D(rows)
    assert ev["rank"].nunique() == layout.size
    assert set(ev["pg_dim"].dropna()) == {"tp_row", "tp_col"}
    spec = ModelSpec.from_hf_config(run_dir)  # the run writes its model's config.json
    c = analysis.compare(ev, spec, W, analysis.ParallelConfig(tp2d=layout))
    assert set(c["status"]) == {"matched"}
    assert (c["count_error"].abs() < 1e-12).all()
    # Same answer from the command line.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["compare", run_dir, "--model", f"{run_dir}/config.json",
                       "--batch", "2", "--prompt", "16", "--output", "8",
                       "--tp2d-rows", ",".join(map(str, rows)),
                       "--tp2d-cols", ",".join(map(str, layout.cols))])
    assert rc == 0
    assert f"{len(c)} of {len(c)} (phase, op, dim, bytes) rows matched; counts agree exactly" \
        in out.getvalue()
    with open(f"{run_dir}/layers.json") as fh:
        layers = json.load(fh)
    assert [r["work_share"] for r in layers["ranks"]] == pytest.approx(shares)
    # One duration per layer per forward (prefill + output_len - 1 decode steps), every rank.
    assert {len(r["layer_ns"]) for r in layers["ranks"]} == {4 * W.output_len}


def test_proportional_split():
    from commscope.models.llama2d import proportional_split

    assert proportional_split(4, [1, 1, 1]) == [2, 1, 1]
    assert proportional_split(4, [2, 2, 1]) == [2, 1, 1]   # 1.6, 1.6, 0.8: remainders .6 .6 .8
    assert proportional_split(128, [2, 2, 1]) == [51, 51, 26]
    with pytest.raises(ValueError, match="positive"):
        proportional_split(4, [1, 0])


# -- the advisor -----------------------------------------------------------------------------------
def _line(alpha_by_n: dict[int, float], beta_us_per_byte: float) -> CostModel:
    """A cost model fitted on exact lines t = alpha(n) + S * beta for the three 2D-TP ops."""
    return CostModel.fit(pd.DataFrame([
        dict(collective=op, nranks=n, bytes=s, time_us=a + s * beta_us_per_byte)
        for op in ("all_reduce", "all_gather", "reduce_scatter")
        for n, a in alpha_by_n.items() for s in (64, 128, 256, 512, 1024, 2048, 4096)]))


INTRA = _line({2: 10, 3: 10, 4: 10}, 1 / 1000)
INTER = _line({2: 100, 3: 300, 4: 400}, 1 / 100)
M = ModelSpec("m", 64, 4, 4, 2, 128, 100, dtype_bytes=4)
WL = Workload(batch=2, prompt_len=8, output_len=3)      # decode T = 2: T*h*b = 512 bytes


def _dev(node, cap, mem=80.0):
    return dict(node=node, capability=cap, memory_gb=mem)


def test_advise_heterogeneous_hand_derived():
    # Two capability-1 devices on node a, one capability-0.5 device on node b; one layer of
    # compute costs 1000 us on capability 1 (500 us per sublayer).
    devs = [_dev("a", 1.0), _dev("a", 1.0), _dev("b", 0.5)]
    a = advise_tp2d(devs, M, WL, {"intra": INTRA, "inter": INTER}, compute_us_per_layer=1000)
    best = a.iloc[0]
    # Chosen: row groups by node (2, 1), work 0.4/0.4/0.2 -> compute 500*0.4/1 = 200 us; row
    # group {0,1} intra: reduce_scatter and all_gather of 512 B = 10.512 us each; column groups
    # {0,2}, {1,2} inter: all_reduce of 256 B = 102.56 us, device 2 in both = 205.12 us.
    chosen_us = 2 * (200 + 10.512 + 205.12 + 10.512)
    assert (best["rows"], best["cols"], best["split"], best["symmetric"]) == \
        ((2, 1), (2, 2), "capability", False)
    assert best["groups"] == ((0, 1), (2,))
    assert best["predicted_layer_us"] == pytest.approx(chosen_us)
    assert best["compute_us"] == pytest.approx(400)
    # Best symmetric: 3 single-device row groups, equal work: the slow device computes
    # 500/3/0.5 us, then one inter all_reduce of 512 B on 3 ranks (305.12 us).
    sym = a[a["symmetric"]].iloc[0]
    sym_us = 2 * (500 / 3 / 0.5 + 305.12)
    assert sym["rows"] == (1, 1, 1) and sym["predicted_layer_us"] == pytest.approx(sym_us)
    assert best["gain_vs_best_symmetric_pct"] == pytest.approx((sym_us - chosen_us) / sym_us * 100)
    assert sym["gain_vs_best_symmetric_pct"] == pytest.approx(0)
    # Every (rows, split) candidate once: grids (3,), (1,1,1), node-aligned (2,1); two splits.
    assert sorted(zip(a["rows"], a["split"])) == sorted(
        (r, s) for r in ((3,), (1, 1, 1), (2, 1)) for s in ("equal", "capability"))


def test_advise_homogeneous_picks_symmetric():
    devs = [_dev("a", 1.0)] * 2 + [_dev("b", 1.0)] * 2
    a = advise_tp2d(devs, M, WL, {"intra": INTRA, "inter": INTER}, compute_us_per_layer=1000)
    best = a.iloc[0]
    # Row groups = nodes (2, 2): compute 125, intra RS/AG 10.512 each, inter all_reduce of
    # 256 B on 2 ranks 102.56 per device, per sublayer.
    assert (best["rows"], best["symmetric"], best["split"]) == ((2, 2), True, "equal")
    assert best["predicted_layer_us"] == pytest.approx(2 * (125 + 10.512 + 102.56 + 10.512))
    assert best["gain_vs_best_symmetric_pct"] == 0
    assert set(a["split"]) == {"equal"}  # equal capabilities: one split only


def test_advise_memory_and_bad_input(tmp_path):
    # Device 2 has room for a 0.2 share but not a third of the model: equal splits don't fit.
    need = analysis._schedule.memory_per_device_gb(M, WL, 1, 1)
    devs = [_dev("a", 1.0), _dev("a", 1.0), _dev("b", 0.5, mem=need * 0.3 / 0.9)]
    a = advise_tp2d(devs, M, WL, {"intra": INTRA, "inter": INTER}, compute_us_per_layer=1000)
    assert set(a.loc[a["fits_memory"], "split"]) == {"capability"}
    assert list(a["fits_memory"]) == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="device 1 lacks capability"):
        advise_tp2d([_dev("a", 1.0), {"node": "a", "memory_gb": 8}], M, WL, {"intra": INTRA})
    with pytest.raises(ValueError, match="cost_models must map"):
        advise_tp2d([_dev("a", 1.0)] * 2, M, WL, {"nvlink": INTRA})


def test_cli_advise_tp2d(tmp_path):
    INTRA.save(str(tmp_path / "intra.json"))
    INTER.save(str(tmp_path / "inter.json"))
    f = tmp_path / "devices.json"
    f.write_text(json.dumps({"devices": [_dev("a", 1.0), _dev("a", 1.0), _dev("b", 0.5)],
                             "cost_models": {"intra": "intra.json", "inter": "inter.json"},
                             "compute_us_per_layer": 1000}))
    cfg = tmp_path / "m" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 4,
                               "num_attention_heads": 4, "num_key_value_heads": 2,
                               "intermediate_size": 128, "vocab_size": 100,
                               "torch_dtype": "float32"}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["advise", "--devices", str(f), "--tp2d", "--model", str(cfg),
                       "--batch", "2", "--prompt", "8", "--output", "3"])
    assert rc == 0
    chosen_us = 2 * (200 + 10.512 + 205.12 + 10.512)
    assert f"chosen: rows=[2, 1] cols=[2, 2] split=capability: {chosen_us:,.1f} us" \
        in out.getvalue()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"node": "a", "capability": 1.0}]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli_main(["advise", "--devices", str(bad), "--tp2d", "--model", str(cfg)]) == 1
    assert f"{bad}: device 0 lacks memory_gb" in err.getvalue()
    with contextlib.redirect_stderr(err):
        assert cli_main(["advise", "--devices", str(f), "--model", str(cfg)]) == 1
    assert "a devices file needs --tp2d" in err.getvalue()
