"""Predicted schedules against hand-derived counts and bytes; presets; HF configs; advise."""

from __future__ import annotations

import json

import pytest

from commscope.analysis import (
    TP2D,
    CostModel,
    ModelSpec,
    ParallelConfig,
    Workload,
    advise,
    predict_schedule,
)

TINY = ModelSpec("tiny", hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                 intermediate_size=128, vocab_size=100, dtype_bytes=4)
MOE = ModelSpec("tiny-moe", 64, 4, 4, 2, 128, 100, num_experts=4, experts_per_token=2,
                moe_intermediate_size=32, first_dense_layers=1, dtype_bytes=4)
W = Workload(batch=2, prompt_len=8, output_len=3)  # prefill T=16, decode T=2


def _rows(cfg, model=TINY, **kw):
    s = predict_schedule(model, W, cfg, **kw)
    return {(r.phase, r.op, r.pg_dim, r.pg_size, r.bytes): r.count for r in s.itertuples()}


def test_tp():
    assert _rows(ParallelConfig(tp=2)) == {
        ("prefill", "all_reduce", "tp", 2, 16 * 64 * 4): 2 * 4 + 1,  # 2 per layer + embedding
        ("prefill", "all_gather", "tp", 2, 2 * 100 * 4): 1,          # logits of 2 sequences
        ("decode", "all_reduce", "tp", 2, 2 * 64 * 4): 9,
        ("decode", "all_gather", "tp", 2, 800): 1,
    }


def test_sequence_parallel():
    assert _rows(ParallelConfig(tp=2, sequence_parallel=True)) == {
        ("prefill", "reduce_scatter", "tp", 2, 4096): 8, ("prefill", "all_gather", "tp", 2, 4096): 8,
        ("prefill", "all_reduce", "tp", 2, 4096): 1, ("prefill", "all_gather", "tp", 2, 800): 1,
        ("decode", "reduce_scatter", "tp", 2, 512): 8, ("decode", "all_gather", "tp", 2, 512): 8,
        ("decode", "all_reduce", "tp", 2, 512): 1, ("decode", "all_gather", "tp", 2, 800): 1,
    }


def test_pp_and_options():
    assert _rows(ParallelConfig(pp=2), pp_token_return=False) == {
        ("prefill", "send", "pp", 2, 4096): 0.5, ("prefill", "recv", "pp", 2, 4096): 0.5,
        ("decode", "send", "pp", 2, 512): 0.5, ("decode", "recv", "pp", 2, 512): 0.5,
    }
    # Sampled token ids (int64) go back from the last stage to the first.
    r = _rows(ParallelConfig(pp=2))
    assert r[("decode", "send", "pp", 2, 2 * 8)] == 0.5
    r = _rows(ParallelConfig(pp=4), pp_sends="hidden+residual")
    assert r[("prefill", "send", "pp", 2, 8192)] == 0.75


def test_tp_x_pp():
    assert _rows(ParallelConfig(tp=2, pp=2), pp_token_return=False) == {
        ("prefill", "all_reduce", "tp", 2, 4096): 4.5, ("prefill", "all_gather", "tp", 2, 800): 0.5,
        ("prefill", "send", "pp", 2, 4096): 0.5, ("prefill", "recv", "pp", 2, 4096): 0.5,
        ("decode", "all_reduce", "tp", 2, 512): 4.5, ("decode", "all_gather", "tp", 2, 800): 0.5,
        ("decode", "send", "pp", 2, 512): 0.5, ("decode", "recv", "pp", 2, 512): 0.5,
    }
    split = _rows(ParallelConfig(tp=2, pp=2), pp_tp_split=True, pp_token_return=False)
    assert split[("prefill", "send", "pp", 2, 2048)] == 0.5
    assert split[("prefill", "all_gather", "tp", 2, 4096)] == 0.5


def test_2d_tp_even_and_uneven():
    # 2x2 grid, per sublayer (8 per step): reduce_scatter + all_gather of T*h*b in the row group,
    # all_reduce of each half of the hidden dim (T*h*b/2) in its column group.
    even = _rows(ParallelConfig(tp2d=TP2D.grid(2, 2)))
    assert even == {
        ("prefill", "reduce_scatter", "tp_row", 2, 4096): 8,
        ("prefill", "all_gather", "tp_row", 2, 4096): 8,
        ("prefill", "all_reduce", "tp_col", 2, 2048): 8,
        ("decode", "reduce_scatter", "tp_row", 2, 512): 8,
        ("decode", "all_gather", "tp_row", 2, 512): 8,
        ("decode", "all_reduce", "tp_col", 2, 256): 8,
    }
    # Rows (4, 2): 4 of 6 ranks in a 4-rank row group, 2 in a 2-rank one; hidden quarters owned
    # by (0, 4), (1, 4), (2, 5), (3, 5): 8 column-group calls of T*h*b/4 per sublayer, 6 ranks.
    uneven = _rows(ParallelConfig(tp2d=TP2D(rows=(4, 2))))
    assert uneven == pytest.approx({
        ("prefill", "reduce_scatter", "tp_row", 4, 4096): 8 * 4 / 6,
        ("prefill", "all_gather", "tp_row", 4, 4096): 8 * 4 / 6,
        ("prefill", "reduce_scatter", "tp_row", 2, 4096): 8 * 2 / 6,
        ("prefill", "all_gather", "tp_row", 2, 4096): 8 * 2 / 6,
        ("prefill", "all_reduce", "tp_col", 2, 1024): 8 * 8 / 6,
        ("decode", "reduce_scatter", "tp_row", 4, 512): 8 * 4 / 6,
        ("decode", "all_gather", "tp_row", 4, 512): 8 * 4 / 6,
        ("decode", "reduce_scatter", "tp_row", 2, 512): 8 * 2 / 6,
        ("decode", "all_gather", "tp_row", 2, 512): 8 * 2 / 6,
        ("decode", "all_reduce", "tp_col", 2, 128): 8 * 8 / 6,
    })


def test_ep():
    r = _rows(ParallelConfig(ep=2), model=MOE)
    # 3 MoE layers x (dispatch + combine), T*k*h*b*(e-1)/e bytes sent per rank.
    assert r == {("prefill", "all_to_all", "ep", 2, 16 * 2 * 64 * 4 // 2): 6,
                 ("decode", "all_to_all", "ep", 2, 2 * 2 * 64 * 4 // 2): 6}


def test_presets_and_hf_config(tmp_path):
    for name in ("Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3-8B", "Llama-3-70B",
                 "Mistral-7B", "Mixtral-8x7B", "Qwen2.5-72B", "DeepSeek-V3"):
        m = ModelSpec.from_preset(name)
        assert m.hidden_size > 0 and m.num_layers > 0
    assert ModelSpec.from_preset("llama-3-70b").num_kv_heads == 8
    with pytest.raises(KeyError, match="unknown model preset"):
        ModelSpec.from_preset("gpt-9")
    cfg = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
           "torch_dtype": "bfloat16", "num_local_experts": 8, "num_experts_per_tok": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = ModelSpec.from_hf_config(tmp_path)
    assert (m.hidden_size, m.num_layers, m.num_kv_heads, m.num_experts, m.experts_per_token,
            m.dtype_bytes) == (2048, 16, 8, 8, 2, 2)


def test_predicted_time_uses_cost_model():
    import pandas as pd

    meas = pd.DataFrame([dict(collective="all_reduce", nranks=2, bytes=s, time_us=10 + s / 1e3)
                         for s in (256, 512, 1024, 4096, 16384)])
    cm = CostModel.fit(meas)
    s = predict_schedule(TINY, W, ParallelConfig(tp=2), cm)
    ar = s[(s["phase"] == "decode") & (s["op"] == "all_reduce")].iloc[0]
    assert ar["predicted_us_per_call"] == pytest.approx(10 + 512 / 1e3)
    assert ar["predicted_us"] == pytest.approx(9 * (10 + 512 / 1e3))


def test_advise_validity_and_ranking():
    import pandas as pd

    meas = pd.DataFrame([dict(collective=op, nranks=n, bytes=s, time_us=5 * n + s / 1e3)
                         for op in ("all_reduce", "all_gather") for n in (2, 4)
                         for s in (256, 1024, 4096, 16384)])
    a = advise(4, ModelSpec("m", 64, 6, 6, 2, 128, 100, dtype_bytes=4), W, CostModel.fit(meas))
    valid = a[a["rank"].notna()]
    invalid = a[a["rank"].isna()]
    # 6 heads: TP=4 invalid; 6 layers: PP=4 invalid.
    assert set(invalid["config"]) >= {"TP=4", "PP=4"}
    assert "heads not divisible" in invalid.set_index("config").loc["TP=4", "why"]
    assert list(valid["rank"]) == list(range(1, len(valid) + 1))
    # Hand-derived decode times (cost model t = 5n + S/1000 us; sends priced as a 2-rank
    # all_gather of 2S): all_reduce of 512 B = 10.512, logits all_gather of 800 B = 10.8, PP
    # activations 2 x 0.5 x 11.024 plus token ids 2 x 0.5 x 10.032.
    ar, ag, pp = 10.512, 10.8, 11.024 + 10.032
    expected = [("DP=4", 0.0), ("PP=2 x DP=2", pp), ("TP=2 x PP=2", 6.5 * ar + ag / 2 + pp),
                ("TP=2 x DP=2", 13 * ar + ag)]
    assert list(valid["config"]) == [c for c, _ in expected]
    assert list(valid["decode_us_per_token"]) == pytest.approx([t for _, t in expected])
    assert all(isinstance(w, str) and "per token" in w for w in valid["why"])
