"""Fitting one cost curve: piecewise alpha-beta lines in relative error, breakpoints by DP.

For one key (op, group size, nodes, library) the per-size median times t_i at sizes S_i are
covered by k consecutive pieces, each a line t = alpha + beta * S with alpha >= 0 and beta >= 0
fitted by weighted least squares with weights 1/t^2 (relative error). The number of pieces and
the breakpoints minimise
    n * log(SSE / n + noise_floor^2) + penalty * (3k - 1) * log(n)
(a BIC with 2 parameters per piece plus k - 1 breakpoints). The noise floor says that relative
errors below it are measurement noise, not structure: without it a piece through two or three
points has SSE ~ 0 and the criterion rewards splitting a noisy straight line into many pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Fit", "fit_curve", "wls_nonneg"]


def _candidates(sw, ss, st, sss, sst):
    """The three KKT candidates of min sum w (a + b s - t)^2 s.t. a, b >= 0, as arrays
    (alpha, beta) broadcast over the inputs: unconstrained, beta = 0, alpha = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        det = sw * sss - ss * ss
        b_free = (sw * sst - ss * st) / det
        a_free = (st - b_free * ss) / sw
        b_zero_a = sst / sss            # alpha = 0
        a_zero_b = st / sw              # beta = 0 (pure latency)
    # On ties (one point) the pure latency line wins: the safer guess for unmeasured sizes.
    return (a_free, b_free), (a_zero_b, np.zeros_like(sw)), (np.zeros_like(b_zero_a), b_zero_a)


def _sse(a, b, n, sw, ss, st, sss, sst):
    # sum w (a + b s - t)^2 with w = 1/t^2, expanded (sum w t^2 = n).
    return n - 2 * a * st - 2 * b * sst + a * a * sw + 2 * a * b * ss + b * b * sss


def _best(n, sw, ss, st, sss, sst):
    """alpha, beta >= 0 and the weighted SSE of the best feasible KKT candidate."""
    best_sse = np.full(np.shape(sw), np.inf)
    best_a = np.zeros(np.shape(sw))
    best_b = np.zeros(np.shape(sw))
    for a, b in _candidates(sw, ss, st, sss, sst):
        ok = np.isfinite(a) & np.isfinite(b) & (a >= 0) & (b >= 0)
        with np.errstate(invalid="ignore", over="ignore"):   # empty ranges: masked below
            sse = np.where(ok, _sse(a, b, n, sw, ss, st, sss, sst), np.inf)
        better = sse < best_sse
        best_sse = np.where(better, sse, best_sse)
        best_a = np.where(better, a, best_a)
        best_b = np.where(better, b, best_b)
    return best_a, best_b, np.maximum(best_sse, 0.0)


def wls_nonneg(s: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """alpha, beta >= 0 minimising sum(((alpha + beta s) - t) / t)^2."""
    w = 1.0 / t**2
    a, b, _ = _best(len(s), w.sum(), (w * s).sum(), (w * t).sum(), (w * s * s).sum(),
                    (w * s * t).sum())
    return float(a), float(b)


def _piece_costs(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """cost[i, j] = relative SSE of the best line through points i..j-1 (all pairs at once,
    from prefix sums)."""
    w = 1.0 / t**2
    pre = [np.concatenate([[0.0], np.cumsum(x)]) for x in (np.ones_like(s), w, w * s, w * t,
                                                           w * s * s, w * s * t)]
    d = [p[None, :] - p[:, None] for p in pre]     # [i, j] -> sum over i..j-1
    _, _, sse = _best(*d)
    return sse


def _segmentations(s: np.ndarray, t: np.ndarray, max_pieces: int,
                   min_points: int) -> dict[int, tuple[float, list[int]]]:
    """For each number of pieces k: (relative SSE, start indices) of the best segmentation
    (dynamic programming over all breakpoints, every piece >= min_points sizes)."""
    n = len(s)
    out: dict[int, tuple[float, list[int]]] = {}
    if n < min_points:
        return out
    idx = np.arange(n + 1)
    cost = np.where(idx[None, :] - idx[:, None] >= min_points, _piece_costs(s, t), np.inf)
    dp = np.full((max_pieces + 1, n + 1), np.inf)
    arg = np.zeros((max_pieces + 1, n + 1), dtype=int)
    dp[0, 0] = 0.0
    for k in range(1, max_pieces + 1):
        cands = dp[k - 1][:, None] + cost          # [i, j]: first i points in k-1 pieces + i..j
        arg[k] = np.argmin(cands, axis=0)
        dp[k] = cands[arg[k], idx]
        if not np.isfinite(dp[k, n]):
            break
        starts, j = [], n
        for kk in range(k, 0, -1):
            j = int(arg[kk, j])
            starts.append(j)
        out[k] = (float(dp[k, n]), sorted(starts))
    return out


def _bic(n: int, sse: float, k: int, noise_floor: float, penalty: float) -> float:
    return n * math.log(sse / n + noise_floor**2) + penalty * (3 * k - 1) * math.log(n)


def _segment(s: np.ndarray, t: np.ndarray, max_pieces: int, min_points: int,
             noise_floor: float, penalty: float) -> list[int]:
    """Start indices of the pieces minimising the penalised criterion (module docstring)."""
    n = len(s)
    segs = _segmentations(s, t, max_pieces, min_points)
    if not segs:
        return [0]
    best = min(segs, key=lambda k: (_bic(n, segs[k][0], k, noise_floor, penalty), k))
    return segs[best][1]


@dataclass
class Fit:
    """One fitted curve: measured sizes, pieces (start index, alpha_us, beta_us_per_byte)."""

    sizes: list[int]                 # measured sizes (bytes), sorted
    starts: list[int]                # index of each piece's first size
    alpha: list[float]               # us
    beta: list[float]                # us per byte
    rel_std: list[float]             # residual relative std per piece
    bounds: list[float] = field(default_factory=list)  # size where each piece starts

    def piece(self, nbytes: float) -> int:
        """Index of the piece whose size range holds `nbytes`."""
        p = 0
        for k, b in enumerate(self.bounds):
            if nbytes >= b:
                p = k
        return p

    def _line(self, p: int, nbytes: float) -> float:
        return max(self.alpha[p] + self.beta[p] * nbytes, 1e-3)

    def predict(self, nbytes: float) -> float:
        """Predicted time (us). Between the last size of one piece and the first of the next
        (NCCL switched algorithm or protocol somewhere there) log t is interpolated in log S
        between the two lines."""
        for k in range(1, len(self.starts)):
            lo, hi = self.sizes[self.starts[k] - 1], self.sizes[self.starts[k]]
            if lo < nbytes < hi:
                w = math.log(nbytes / lo) / math.log(hi / lo)
                return math.exp((1 - w) * math.log(self._line(k - 1, lo))
                                + w * math.log(self._line(k, hi)))
        return self._line(self.piece(nbytes), nbytes)


def spikes(times: np.ndarray, threshold: float) -> np.ndarray:
    """True where a time sticks out of its two neighbours by more than `threshold` (relative)
    in the same direction: a one-size spike (a noisy repetition), not a knee: on a monotone
    curve the median of three neighbours is the point itself, so nothing is flagged there."""
    t = np.asarray(times, dtype=float)
    out = np.zeros(len(t), dtype=bool)
    if len(t) >= 3 and threshold > 0:
        mid = np.median(np.stack([t[:-2], t[1:-1], t[2:]]), axis=0)
        out[1:-1] = np.abs(t[1:-1] / mid - 1) > threshold
    return out


def fit_curve(sizes: np.ndarray, times: np.ndarray, *, max_pieces: int = 5, min_points: int = 3,
              noise_floor: float = 0.01, penalty: float = 1.0,
              spike_threshold: float = 0.15) -> Fit:
    """Fit one curve to per-size median `times` (us) at sorted `sizes` (bytes). One-size spikes
    (`spikes`) are left out of the lines; the curve still covers their sizes."""
    if min_points < 2:
        raise ValueError("min_points must be >= 2 (a line has two parameters)")
    all_sizes = np.asarray(sizes, dtype=float)
    keep = ~spikes(times, spike_threshold)
    sizes = all_sizes[keep]
    times = np.asarray(times, dtype=float)[keep]
    starts = _segment(sizes, times, max_pieces, min_points, noise_floor, penalty)
    return _build(sizes, times, starts)


def _build(sizes: np.ndarray, times: np.ndarray, starts: list[int]) -> Fit:
    """The lines of a given segmentation."""
    ends = starts[1:] + [len(sizes)]
    alpha, beta, rel_std, bounds = [], [], [], []
    for k, (i, j) in enumerate(zip(starts, ends)):
        a, b = wls_nonneg(sizes[i:j], times[i:j])
        resid = ((a + b * sizes[i:j]) - times[i:j]) / times[i:j]
        alpha.append(a)
        beta.append(b)
        rel_std.append(float(np.sqrt(np.mean(resid**2))))
        # A piece starts halfway (geometrically) between two measured sizes.
        bounds.append(0.0 if k == 0 else float(math.sqrt(sizes[i - 1] * sizes[i])))
    return Fit([int(x) for x in sizes], [int(i) for i in starts], alpha, beta, rel_std, bounds)
