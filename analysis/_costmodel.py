"""Piecewise alpha-beta cost model of collectives, calibrated from measurements.

Per key (op, group size n, nodes, library) the time of a message of S bytes is
    t(S) = alpha_p + beta_p * S        for S in size range p,
with the breakpoints between ranges chosen from the data (NCCL switches algorithm and protocol
by size, so one line does not fit). Fits minimise relative error on per-size medians (weighted
least squares with weights 1/t^2) with alpha, beta >= 0, at least `min_points` sizes per range
and a penalised choice of the number of ranges (`_fit.py`). Curves are kept per library
(backend) and never mixed; each records where its measurements came from. Across group sizes,
the first range's latency is modelled as
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
from typing import Any

import numpy as np
import pandas as pd

from ._bandwidth import bus_factor
from ._fit import Fit, fit_curve

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


class CostModel:
    """A fitted cost model. Use `CostModel.fit(measurements)`, then `predict`.

    Curves of different libraries (backends: nccl, gloo, ...) are never mixed: when the model
    holds several, `predict` needs `library=` (or use `select(library)`), otherwise it raises
    `ValueError`. Predictions outside what was measured warn once per curve and kind.
    """

    def __init__(self, fits: dict[tuple, Fit], latency: dict[tuple, tuple[float, float]],
                 provenance: dict[str, Any], quality: pd.DataFrame | None = None,
                 curve_provenance: dict[tuple, dict[str, Any]] | None = None) -> None:
        self.fits = fits
        self.latency = latency          # (op, nodes, library) -> (a0, a_hop)
        self.provenance = provenance
        self.curve_provenance = curve_provenance or {}   # key -> sources, runs, timing, rows
        self._quality = quality
        self._warned: set[tuple] = set()

    @property
    def libraries(self) -> list[str]:
        """Libraries (backends) the model has curves for."""
        return sorted({k[3] for k in self.fits})

    def select(self, library: str) -> CostModel:
        """A model with only `library`'s curves (so `predict` needs no `library=`)."""
        library = str(library).lower()
        if library not in self.libraries:
            raise KeyError(f"no curves for library {library!r}; the model has {self.libraries}")
        fits = {k: f for k, f in self.fits.items() if k[3] == library}
        lat = {k: v for k, v in self.latency.items() if k[2] == library}
        prov = {k: v for k, v in self.curve_provenance.items() if k[3] == library}
        q = None if self._quality is None else self._quality[self._quality["library"] == library]
        return CostModel(fits, lat, dict(self.provenance, selected_library=library), q, prov)

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, measurements: pd.DataFrame, *, max_pieces: int = 5, min_points: int = 3,
            noise_floor: float = 0.01, penalty: float = 1.0, spike_threshold: float = 0.15,
            key: tuple[str, ...] = KEY) -> CostModel:
        """Fit per key on per-size medians. Options: `max_pieces` (size ranges per key),
        `min_points` (sizes per range, >= 3 so no piece is a line through two points),
        `noise_floor` (relative error treated as noise when choosing the number of pieces),
        `penalty` (multiplies the BIC complexity term: larger prefers fewer pieces),
        `spike_threshold` (a size more than this far, relative, above or below both neighbours
        is left out of the lines; 0 keeps every size), `key` (columns identifying a curve)."""
        m = _normalise(measurements)
        fits: dict[tuple, Fit] = {}
        cprov: dict[tuple, dict[str, Any]] = {}
        for k, g in m.groupby(list(key), dropna=False):
            med = g.groupby("bytes")["time_us"].median().sort_index()
            kt = _tuple(k)
            fits[kt] = fit_curve(med.index.to_numpy(dtype=float), med.to_numpy(),
                                 max_pieces=max_pieces, min_points=min_points,
                                 noise_floor=noise_floor, penalty=penalty,
                                 spike_threshold=spike_threshold)
            cprov[kt] = _curve_provenance(g)
        latency = _fit_latency(fits)
        prov = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sources": sorted(map(str, m["source"].dropna().unique())),
            "libraries": sorted({k[3] for k in fits}),
            "rows": int(len(m)),
            "key": list(key),
            "options": {"max_pieces": max_pieces, "min_points": min_points,
                        "noise_floor": noise_floor, "penalty": penalty,
                        "spike_threshold": spike_threshold},
            "ranges": {_keystr(k): [f.sizes[0], f.sizes[-1]] for k, f in fits.items()},
            "group_sizes": sorted({int(k[1]) for k in fits}),
        }
        model = cls(fits, latency, prov, curve_provenance=cprov)
        model._quality = model.evaluate(m)
        prov["quality"] = _overall(model._quality)
        return model

    # -- prediction ---------------------------------------------------------------------------
    def _library(self, op: str, library: str | None) -> str | None:
        """The library to use: the one asked for, or the model's only one; never a guess."""
        if library is not None:
            return str(library).lower()
        libs = self.libraries
        if len(libs) > 1:
            raise ValueError(f"the cost model has curves for several libraries {libs}: pass "
                             f"library=... to predict {op!r} (or use CostModel.select(library))"
                             f"; curves of different libraries are never mixed")
        return libs[0] if libs else None

    def _find(self, op: str, nranks: int, nodes: int | None, library: str | None) -> Fit | None:
        hits = [k for k in self.fits if k[0] == op and int(k[1]) == int(nranks)
                and (nodes is None or k[2] == int(nodes)) and (library is None or k[3] == library)]
        if len(hits) > 1:
            raise ValueError(f"{op} on {nranks} ranks was measured on several node counts "
                             f"{sorted(k[2] for k in hits)}: pass nodes=...")
        return self.fits[hits[0]] if hits else None

    def _warn(self, key: tuple, message: str, stacklevel: int) -> None:
        # Once per (kind, curve): a schedule predicts the same op at many sizes.
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, CostModelWarning, stacklevel=stacklevel + 1)

    def predict(self, op: str, nranks: int, nbytes: float, *, nodes: int | None = None,
                library: str | None = None, warn: bool = True) -> float:
        """Predicted time in microseconds of one `op` of `nbytes` (nccl-tests size) on `nranks`.

        Warns (`CostModelWarning`, once per curve) beyond 2x the measured size range and for
        group sizes that were not measured; raises `ValueError` when `library` is needed."""
        if nranks <= 1 or nbytes <= 0 and op != "barrier":
            return 0.0
        library = self._library(op, library)
        f = self._find(op, nranks, nodes, library)
        if f is not None:
            lo, hi = f.sizes[0], f.sizes[-1]
            if warn and (nbytes > 2 * hi or nbytes < lo / 2):
                self._warn(("range", op, int(nranks), nodes, library),
                           f"{op} on {nranks} ranks ({library}): {nbytes:.0f} B is outside the "
                           f"measured range {lo}-{hi} B (extrapolated; further sizes outside "
                           f"the range of this curve are not reported again)", 2)
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
            self._warn(("nranks", op, n, nodes, library),
                       f"{op} on {n} ranks ({library}) was not measured (measured: "
                       f"{sorted(int(k[1]) for k in same_op)}); predicted from the latency "
                       f"model a0 + nsteps*a_hop and the measured bus bandwidth", 3)
        return max(alpha + extra, 1e-3)

    def uncertainty(self, op: str, nranks: int, nbytes: float, **key: Any) -> float:
        """Relative standard deviation of the fit in the size range of `nbytes` (0.05 = 5 %)."""
        f = self._find(op, nranks, key.get("nodes"), self._library(op, key.get("library")))
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

    def curves(self) -> pd.DataFrame:
        """One row per curve: key, pieces, measured size range and where it came from."""
        rows = []
        for k, f in self.fits.items():
            p = self.curve_provenance.get(k, {})
            rows.append({**dict(zip(KEY, k)), "pieces": len(f.alpha), "min_bytes": f.sizes[0],
                         "max_bytes": f.sizes[-1], "sizes": p.get("sizes", len(f.sizes)),
                         "sources": ",".join(p.get("sources", [])),
                         "time_basis": ",".join(p.get("time_basis", [])),
                         "runs": len(p.get("runs", []))})
        return pd.DataFrame(rows, columns=list(KEY) + ["pieces", "min_bytes", "max_bytes",
                                                       "sizes", "sources", "time_basis", "runs"])

    # -- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form written by `save`."""
        return {
            "format": "commscope-costmodel/1",
            "provenance": self.provenance,
            "curves": [{"key": dict(zip(KEY, [k[0], int(k[1]), int(k[2]), k[3]])),
                        "sizes": f.sizes, "starts": f.starts, "alpha_us": f.alpha,
                        "beta_us_per_byte": f.beta, "rel_std": f.rel_std, "bounds": f.bounds,
                        "provenance": self.curve_provenance.get(k, {})}
                       for k, f in self.fits.items()],
            "latency": [{"op": k[0], "nodes": int(k[1]), "library": k[2], "a0_us": v[0],
                         "a_hop_us": v[1]} for k, v in self.latency.items()],
        }

    def save(self, path: str) -> None:
        """Write the model as JSON (curves, latency model, provenance, fit quality)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)

    @classmethod
    def load(cls, path: str, *, library: str | None = None) -> CostModel:
        """Read a model written by `save`; `library` keeps only that library's curves."""
        with open(path) as fh:
            d = json.load(fh)
        if d.get("format") != "commscope-costmodel/1":
            raise ValueError(f"{path}: not a commscope cost model (format {d.get('format')!r})")
        fits, cprov = {}, {}
        for c in d["curves"]:
            k = c["key"]
            kt = (k["op"], k["nranks"], k["nodes"], k["library"])
            fits[kt] = Fit(c["sizes"], c["starts"], c["alpha_us"], c["beta_us_per_byte"],
                           c["rel_std"], c["bounds"])
            cprov[kt] = c.get("provenance", {})
        latency = {(x["op"], x["nodes"], x["library"]): (x["a0_us"], x["a_hop_us"])
                   for x in d["latency"]}
        model = cls(fits, latency, d["provenance"], curve_provenance=cprov)
        return model.select(library) if library is not None else model

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
                 library=m["library"].fillna("unknown").astype(str).str.lower())
    return m[m["time_us"] > 0]


def _curve_provenance(g: pd.DataFrame) -> dict[str, Any]:
    """Where one curve's measurements came from (kinds, files, runs, device or host time)."""
    def vals(c: str) -> list[str]:
        return sorted(map(str, g[c].dropna().unique())) if c in g else []

    return {"sources": vals("source"), "paths": vals("path"), "runs": vals("run"),
            "time_basis": vals("time_basis"), "rows": int(len(g)),
            "sizes": int(g["bytes"].nunique())}


def _tuple(k: Any) -> tuple:
    k = k if isinstance(k, tuple) else (k,)
    return (str(k[0]), int(k[1]), int(k[2]), str(k[3]))


def _keystr(k: tuple) -> str:
    return f"{k[0]}/n={k[1]}/nodes={k[2]}/{k[3]}"


def _fit_latency(fits: dict[tuple, Fit]) -> dict[tuple, tuple[float, float]]:
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
