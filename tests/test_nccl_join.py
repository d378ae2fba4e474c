"""`join_ranks` (hashed int codes) gives exactly what the pandas merge it replaced gives
(`_join_ranks_merge`, kept here as the reference), including NA keys (a record without a
prefix has no host and no pid) and missing communicators."""

from __future__ import annotations

import numpy as np
import pandas as pd

from commscope.profiler._nccl_formats import GATHER_LIKE
from commscope.profiler._nccl_tables import join_ranks

_STR = pd.StringDtype(na_value=np.nan)


def _join_ranks_merge(colls: pd.DataFrame, comms: pd.DataFrame) -> pd.DataFrame:
    """The reference: `join_ranks` as a pandas merge."""
    key = comms[["host", "pid", "comm", "rank", "nranks"]].rename(columns={"nranks": "_n"})
    key = key.astype({"pid": "Int64", "rank": "Int64", "_n": "Int64"})
    key["host"] = key["host"].astype(colls["host"].dtype)
    key["comm"] = key["comm"].astype(colls["comm"].dtype)
    colls = colls.merge(key, on=["host", "pid", "comm"], how="left", sort=False)
    colls["pg_size"] = colls["nranks"].fillna(colls.pop("_n")).astype("Int64")
    mult = colls["pg_size"].where(colls["op"].isin(GATHER_LIKE), 1).astype("Int64")
    colls["bytes"] = colls["count"] * colls["elem_bytes"] * mult
    colls["nccl_seq"] = colls.groupby(["host", "pid", "comm"], dropna=False,
                                      sort=False).cumcount().astype("int64")
    return colls


def _colls() -> pd.DataFrame:
    return pd.DataFrame({
        "op": pd.array(["all_reduce", "all_gather", "all_gather", "send", "all_reduce",
                        "reduce_scatter", "all_reduce"], dtype=_STR),
        "count": pd.array([4, 8, 8, 2, 4, 16, 1], dtype="Int64"),
        "elem_bytes": pd.array([4, 2, 2, 1, None, 2, 4], dtype="Int64"),
        "comm": pd.array(["0x10", "0x10", "0x20", "0x10", "0x10", "0x99", "0x10"], dtype=_STR),
        "nranks": pd.array([None, None, 4, None, 2, None, None], dtype="Int64"),
        "host": pd.array(["a", "a", "b", None, "a", "a", "a"], dtype=_STR),
        "pid": pd.array([1, 1, 2, None, 1, 1, 7], dtype="Int64"),
    })


def _comms() -> pd.DataFrame:
    return pd.DataFrame({"host": ["a", "b", None, "c"], "pid": [1, 2, None, 3],
                         "comm": ["0x10", "0x20", "0x10", "0x10"], "rank": [0, 3, 5, 1],
                         "nranks": [2, 4, 8, 2]})


def test_join_ranks_equals_the_pandas_merge():
    fast = join_ranks(_colls(), _comms(), {})
    slow = _join_ranks_merge(_colls(), _comms())
    pd.testing.assert_frame_equal(fast, slow)
    # (a, 1, 0x10) -> rank 0 of 2; (b, 2, 0x20) -> rank 3; (NA, NA, 0x10) -> rank 5 of 8;
    # 0x99 and pid 7 have no communicator.
    assert fast["rank"].tolist() == [0, 0, 3, 5, 0, pd.NA, pd.NA]
    assert fast["pg_size"].tolist() == [2, 2, 4, 8, 2, pd.NA, pd.NA]
    # bytes = count x elem (x group size for gathers); NA where a factor is unknown.
    assert fast["bytes"].tolist() == [16, 32, 64, 2, pd.NA, pd.NA, 4]
    # One sequence per (host, pid, comm), in row order.
    assert fast["nccl_seq"].tolist() == [0, 1, 0, 0, 2, 0, 0]


def test_join_ranks_with_the_callers_codes_and_without_communicators():
    colls = _colls()
    host_codes, hosts = pd.factorize(colls["host"], use_na_sentinel=False)
    comm_codes, comms = pd.factorize(colls["comm"], use_na_sentinel=False)
    given = {"host": (host_codes, list(hosts)), "comm": (comm_codes, list(comms)),
             "gather": colls["op"].isin(["all_gather", "reduce_scatter"]).to_numpy()}
    pd.testing.assert_frame_equal(join_ranks(_colls(), _comms(), given),
                                  _join_ranks_merge(_colls(), _comms()))
    none = join_ranks(_colls(), _comms()[:0], {})
    pd.testing.assert_frame_equal(none, _join_ranks_merge(_colls(), _comms()[:0]))
    assert none["rank"].isna().all() and none["pg_size"].tolist()[2] == 4
