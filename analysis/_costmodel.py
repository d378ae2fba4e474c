"""Piecewise alpha-beta cost model of collectives, calibrated from measurements.

Per key (op, group size n, nodes, library) the time of a message of S bytes is
    t(S) = alpha_p + beta_p * S        for S in size range p,
with the breakpoints between ranges chosen from the data (NCCL switches algorithm and protocol
by size, so one line does not fit). Fits minimise relative error on per-size medians (weighted
least squares with weights 1/t^2). Across group sizes, the first range's latency is modelled as
    alpha(n) = a0 + nsteps(op, n) * a_hop
(nsteps = 2(n-1) for all_reduce, n-1 for all_gather / reduce_scatter / all_to_all, ceil(log2 n)
for broadcast / reduce, 1 for send / recv), and the bandwidth term from the bus bandwidth of the
measured sizes, so group sizes that were not measured can be predicted (with a warning).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._bandwidth import bus_factor

__all__ = ["CostModel", "nsteps", "CostModelWarning"]

_REGIMES = ((64 << 10, "small (<64KiB)"), (4 << 20, "medium (<4MiB)"), (math.inf, "large"))
KEY = ("op", "nranks", "nodes", "library")


class CostModelWarning(UserWarning):
    """Predictions outside what was measured (size range, group size)."""


def nsteps(op: str, n: int) -> int:
    """Latency steps of the classic algorithm for `op` on n ranks (ring / tree)."""
    if op == "all_reduce":
        return 2 * (n - 1)
    if op in ("all_gather", "reduce_scatter", "all_to_all", "gather", "scatter"):
        return n - 1
    if op in ("broadcast", "reduce"):
        return max(1, math.ceil(math.log2(max(n, 2))))
    return 1


def _wls(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """alpha, beta minimising sum(((alpha + beta s) - t) / t)^2, beta >= 0."""
    w = 1.0 / t**2
    sw, ss, st = w.sum(), (w * s).sum(), (w * t).sum()
    sss, sst = (w * s * s).sum(), (w * s * t).sum()
    det = sw * sss - ss * ss
    if len(s) >= 2 and det > 0:
        beta = (sw * sst - ss * st) / det
        alpha = (st - beta * ss) / sw
        if beta >= 0:
            return float(alpha), float(beta)
    return float(st / sw), 0.0  # flat: a pure latency range


def _rel_sse(s: np.ndarray, t: np.ndarray) -> float:
    a, b = _wls(s, t)
    return float(np.sum((((a + b * s) - t) / t) ** 2))


def _segment(s: np.ndarray, t: np.ndarray, max_pieces: int, min_points: int) -> list[int]:
    """Breakpoints (start indices of pieces) minimising relative SSE + a BIC-like penalty."""
    n = len(s)
    if n < 2 * min_points:
        return [0]
    cost = np.full((n + 1, n + 1), np.inf)
    for i in range(n):
        for j in range(i + min_points, n + 1):
            cost[i, j] = _rel_sse(s[i:j], t[i:j])
    best_score, best_starts = math.inf, [0]
    # dp[k][j]: min cost of covering the first j points with k pieces.
    dp = np.full((max_pieces + 1, n + 1), np.inf)
    arg = np.zeros((max_pieces + 1, n + 1), dtype=int)
    dp[0, 0] = 0.0
    for k in range(1, max_pieces + 1):
        for j in range(min_points, n + 1):
            cands = dp[k - 1, :j] + cost[:j, j]
            i = int(np.argmin(cands))
            dp[k, j], arg[k, j] = cands[i], i
        if not np.isfinite(dp[k, n]):
            continue
        score = n * math.log(max(dp[k, n], 1e-12) / n) + 3 * k * math.log(n)
        if score < best_score - 1e-9:
            starts, j = [], n
            for kk in range(k, 0, -1):
                i = arg[kk, j]
                starts.append(i)
                j = i
            best_score, best_starts = score, sorted(starts)
    return best_starts


@dataclass
class _Fit:
    sizes: list[int]                 # measured sizes (bytes), sorted
    starts: list[int]                # index of each piece's first size
    alpha: list[float]               # us
    beta: list[float]                # us per byte
    rel_std: list[float]             # residual relative std per piece
    bounds: list[float] = field(default_factory=list)  # size where each piece starts

    def piece(self, nbytes: float) -> int:
        p = 0
        for k, b in enumerate(self.bounds):
            if nbytes >= b:
                p = k
        return p

    def _line(self, p: int, nbytes: float) -> float:
        return max(self.alpha[p] + self.beta[p] * nbytes, 1e-3)

    def predict(self, nbytes: float) -> float:
        # Between the last size of one range and the first of the next (where NCCL switched
        # algorithm or protocol somewhere), interpolate log t in log S between the two lines.
        for k in range(1, len(self.starts)):
            lo, hi = self.sizes[self.starts[k] - 1], self.sizes[self.starts[k]]
            if lo < nbytes < hi:
                w = math.log(nbytes / lo) / math.log(hi / lo)
                return math.exp((1 - w) * math.log(self._line(k - 1, lo))
                                + w * math.log(self._line(k, hi)))
        return self._line(self.piece(nbytes), nbytes)


def _fit_key(sizes: np.ndarray, times: np.ndarray, max_pieces: int, min_points: int) -> _Fit:
    starts = _segment(sizes, times, max_pieces, min_points)
    ends = starts[1:] + [len(sizes)]
    alpha, beta, rel_std, bounds = [], [], [], []
    for k, (i, j) in enumerate(zip(starts, ends)):
        a, b = _wls(sizes[i:j], times[i:j])
        resid = ((a + b * sizes[i:j]) - times[i:j]) / times[i:j]
        alpha.append(a)
        beta.append(b)
        rel_std.append(float(np.sqrt(np.mean(resid**2))))
        # A piece starts halfway (geometrically) between two measured sizes.
        bounds.append(0.0 if k == 0 else float(math.sqrt(sizes[i - 1] * sizes[i])))
    return _Fit([int(x) for x in sizes], [int(i) for i in starts], alpha, beta, rel_std, bounds)


class CostModel:
    """A fitted cost model. Use `CostModel.fit(measurements)`, then `predict`."""

    def __init__(self, fits: dict[tuple, _Fit], latency: dict[tuple, tuple[float, float]],
                 provenance: dict[str, Any], quality: pd.DataFrame | None = None) -> None:
        self.fits = fits
        self.latency = latency          # (op, nodes, library) -> (a0, a_hop)
        self.provenance = provenance
        self._quality = quality

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, measurements: pd.DataFrame, *, max_pieces: int = 5, min_points: int = 2,
            key: tuple[str, ...] = KEY) -> CostModel:
        """Fit per key on per-size medians. Options: `max_pieces` (size ranges per key),
        `min_points` (sizes per range), `key` (columns identifying a curve)."""
        m = _normalise(measurements)
        fits: dict[tuple, _Fit] = {}
        for k, g in m.groupby(list(key), dropna=False):
            med = g.groupby("bytes")["time_us"].median().sort_index()
            fits[_tuple(k)] = _fit_key(med.index.to_numpy(dtype=float), med.to_numpy(),
                                       max_pieces, min_points)
        latency = _fit_latency(fits)
        prov = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sources": sorted(map(str, m["source"].dropna().unique())),
            "rows": int(len(m)),
            "key": list(key),
            "options": {"max_pieces": max_pieces, "min_points": min_points},
            "ranges": {_keystr(k): [f.sizes[0], f.sizes[-1]] for k, f in fits.items()},
            "group_sizes": sorted({int(k[1]) for k in fits}),
        }
        model = cls(fits, latency, prov)
        model._quality = model.evaluate(m)
        prov["quality"] = _overall(model._quality)
        return model

    # -- prediction ---------------------------------------------------------------------------
    def _find(self, op: str, nranks: int, nodes: int | None, library: str | None) -> _Fit | None:
        for k, f in self.fits.items():
            if k[0] == op and int(k[1]) == int(nranks) and (nodes is None or k[2] == nodes) \
                    and (library is None or k[3] == library):
                return f
        return None

    def predict(self, op: str, nranks: int, nbytes: float, *, nodes: int | None = None,
                library: str | None = None, warn: bool = True) -> float:
        """Predicted time in microseconds of one `op` of `nbytes` (nccl-tests size) on `nranks`."""
        if nranks <= 1 or nbytes <= 0 and op != "barrier":
            return 0.0
        f = self._find(op, nranks, nodes, library)
        if f is not None:
            lo, hi = f.sizes[0], f.sizes[-1]
            if warn and (nbytes > 2 * hi or nbytes < lo / 2):
                warnings.warn(f"{op} on {nranks} ranks: {nbytes:.0f} B is outside the measured "
                              f"range {lo}-{hi} B (extrapolated)", CostModelWarning, stacklevel=2)
            return f.predict(nbytes)
        return self._predict_unmeasured(op, int(nranks), float(nbytes), nodes, library, warn)

    def _predict_unmeasured(self, op: str, n: int, nbytes: float, nodes: Any, library: Any,
                            warn: bool) -> float:
        same_op = {k: f for k, f in self.fits.items() if k[0] == op and
                   (nodes is None or k[2] == nodes) and (library is None or k[3] == library)}
        if not same_op:
            raise KeyError(f"no measurements for {op!r}"
                           + (f" with library {library!r}" if library else "")
                           + f"; measured: {sorted({k[0] for k in self.fits})}")
        k0 = next(iter(same_op))
        a0, a_hop = self.latency.get((op, k0[2], k0[3]), (None, None))
        if a0 is None:
            nearest = min(same_op, key=lambda k: abs(int(k[1]) - n))
            alpha = same_op[nearest].alpha[0]
        else:
            alpha = a0 + a_hop * nsteps(op, n)
        # Bandwidth term: the bus bandwidth the measured group sizes reach at this size.
        busbw = []
        for k, f in same_op.items():
            t = f.predict(nbytes) - f.alpha[0]
            if t > 0:
                busbw.append(nbytes * float(bus_factor([op], [int(k[1])])[0]) / t)
        factor = float(bus_factor([op], [n])[0])
        extra = nbytes * factor / float(np.median(busbw)) if busbw and factor == factor else 0.0
        if warn:
            warnings.warn(f"{op} on {n} ranks was not measured (measured: "
                          f"{sorted(int(k[1]) for k in same_op)}); predicted from the latency "
                          f"model a0 + nsteps*a_hop and the measured bus bandwidth",
                          CostModelWarning, stacklevel=3)
        return max(alpha + extra, 1e-3)

    def uncertainty(self, op: str, nranks: int, nbytes: float, **key: Any) -> float:
        """Relative standard deviation of the fit in the size range of `nbytes` (0.05 = 5 %)."""
        f = self._find(op, nranks, key.get("nodes"), key.get("library"))
        if f is None:
            return float("nan")
        return f.rel_std[f.piece(nbytes)]

    # -- quality ------------------------------------------------------------------------------
    def evaluate(self, measurements: pd.DataFrame) -> pd.DataFrame:
        """Per-row relative errors of this model on `measurements` (per-size medians)."""
        m = _normalise(measurements)
        med = m.groupby(list(KEY) + ["bytes"], dropna=False)["time_us"].median().reset_index()
        pred = [self.predict(r.op, r.nranks, r.bytes, nodes=r.nodes, library=r.library,
                             warn=False) for r in med.itertuples()]
        med["predicted_us"] = pred
        med["rel_error"] = (med["predicted_us"] - med["time_us"]) / med["time_us"]
        med["regime"] = [next(name for lim, name in _REGIMES if b < lim) for b in med["bytes"]]
        return med

    @property
    def quality(self) -> pd.DataFrame:
        """MAPE, bias, p90 and max relative error (%) per key and size regime, on the fit data."""
        return _quality_table(self._quality)

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "commscope-costmodel/1",
            "provenance": self.provenance,
            "curves": [{"key": dict(zip(KEY, [k[0], int(k[1]), int(k[2]), k[3]])),
                        "sizes": f.sizes, "starts": f.starts, "alpha_us": f.alpha,
                        "beta_us_per_byte": f.beta, "rel_std": f.rel_std, "bounds": f.bounds}
                       for k, f in self.fits.items()],
            "latency": [{"op": k[0], "nodes": int(k[1]), "library": k[2], "a0_us": v[0],
                         "a_hop_us": v[1]} for k, v in self.latency.items()],
        }

    def save(self, path: str) -> None:
        """Write the model as JSON (curves, latency model, provenance, fit quality)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)

    @classmethod
    def load(cls, path: str) -> CostModel:
        """Read a model written by `save`."""
        with open(path) as fh:
            d = json.load(fh)
        if d.get("format") != "commscope-costmodel/1":
            raise ValueError(f"{path}: not a commscope cost model (format {d.get('format')!r})")
        fits = {}
        for c in d["curves"]:
            k = c["key"]
            fits[(k["op"], k["nranks"], k["nodes"], k["library"])] = _Fit(
                c["sizes"], c["starts"], c["alpha_us"], c["beta_us_per_byte"], c["rel_std"],
                c["bounds"])
        latency = {(x["op"], x["nodes"], x["library"]): (x["a0_us"], x["a_hop_us"])
                   for x in d["latency"]}
        return cls(fits, latency, d["provenance"])

    # -- validation ---------------------------------------------------------------------------
    @classmethod
    def holdout(cls, measurements: pd.DataFrame, k: int = 2, **options: Any) -> pd.DataFrame:
        """k-fold held-out error over message sizes: fold f holds out, per key, every k-th size
        (offset f). Returns per held-out size: time_us, predicted_us, rel_error, regime."""
        m = _normalise(measurements)
        rank = m.groupby(list(KEY), dropna=False)["bytes"].rank(method="dense").astype(int) - 1
        out = []
        for f in range(k):
            test = rank % k == f
            # Keep the first and last sizes in training so every held-out size is interpolated.
            edge = (rank == 0) | (rank == m.groupby(list(KEY), dropna=False)["bytes"]
                                  .transform("nunique") - 1)
            test &= ~edge
            model = cls.fit(m[~test], **options)
            out.append(model.evaluate(m[test]).assign(fold=f))
        return pd.concat(out, ignore_index=True)


def _normalise(m: pd.DataFrame) -> pd.DataFrame:
    m = m.rename(columns={"collective": "op"}) if "collective" in m else m.copy()
    if "nodes" not in m:
        m["nodes"] = 1
    if "library" not in m:
        m["library"] = "unknown"
    if "source" not in m:
        m["source"] = None
    m = m.assign(nodes=m["nodes"].fillna(1).astype(int), nranks=m["nranks"].astype(int),
                 library=m["library"].fillna("unknown").astype(str))
    return m[m["time_us"] > 0]


def _tuple(k: Any) -> tuple:
    k = k if isinstance(k, tuple) else (k,)
    return (str(k[0]), int(k[1]), int(k[2]), str(k[3]))


def _keystr(k: tuple) -> str:
    return f"{k[0]}/n={k[1]}/nodes={k[2]}/{k[3]}"


def _fit_latency(fits: dict[tuple, _Fit]) -> dict[tuple, tuple[float, float]]:
    """a0 + nsteps(op, n) * a_hop from each curve's smallest-size latency, per (op, nodes, lib)."""
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for (op, n, nodes, lib), f in fits.items():
        groups.setdefault((op, nodes, lib), []).append((nsteps(op, n), f.predict(f.sizes[0])))
    out = {}
    for k, pts in groups.items():
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        if len(set(x)) >= 2:
            a_hop, a0 = np.polyfit(x, y, 1)
            out[k] = (float(a0), float(max(a_hop, 0.0)))
        else:
            out[k] = (float(y.mean()), 0.0)
    return out


def _quality_table(err: pd.DataFrame | None) -> pd.DataFrame:
    if err is None or err.empty:
        return pd.DataFrame(columns=["op", "nranks", "nodes", "library", "regime", "sizes",
                                     "mape_pct", "bias_pct", "p90_pct", "max_pct"])
    a = err.assign(abs_err=err["rel_error"].abs() * 100, err_pct=err["rel_error"] * 100)
    q = a.groupby(list(KEY) + ["regime"], dropna=False).agg(
        sizes=("bytes", "size"), mape_pct=("abs_err", "mean"), bias_pct=("err_pct", "mean"),
        p90_pct=("abs_err", lambda s: s.quantile(0.9)), max_pct=("abs_err", "max"))
    return q.reset_index()


def _overall(err: pd.DataFrame) -> dict[str, float]:
    e = err["rel_error"].abs() * 100
    return {"median_abs_pct": float(e.median()), "p90_abs_pct": float(e.quantile(0.9)),
            "mape_pct": float(e.mean()), "max_abs_pct": float(e.max())}
