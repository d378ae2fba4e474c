"""Attach NCCL tuning lines to their collectives with sorted-array joins (no per-record loop).

NCCL logs a tuning decision (`AllReduce: 2048 Bytes -> Algo RING proto LL ...`) on the thread
that enqueued the collective. Recent versions print it after the COLL line (several collectives
of one group call may share one tuning line), older ones before it. Within each thread the
records are ordered by position in the log; a collective matches a tuning line of the same
collective name (or a tuning line that names none) whose byte count is count x element size, or
that times the group size (gathers). The direction is chosen per process by which neighbour
relation the log shows more often.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attach_tuning"]

_NONE = np.int64(-1)


def _group_order(thread, nbytes, op, order):
    """Sort by (thread, bytes, op, order); returns the permutation and a group id per sorted
    element. The three group keys are packed into one int64 where they fit (the usual case)."""
    codes, tcode = np.unique(thread, return_inverse=True)
    hi = (tcode.astype(np.int64) << 5) | (op + 1)
    if len(codes) < (1 << 15) and (op < 31).all() and (nbytes < (1 << 43)).all():
        key = (hi << 43) | nbytes
        perm = np.lexsort((order, key))
        k = key[perm]
        change = np.ones(len(perm), bool)
        change[1:] = k[1:] != k[:-1]
        return perm, np.cumsum(change)
    perm = np.lexsort((order, op, nbytes, thread))
    t, b, o = thread[perm], nbytes[perm], op[perm]
    change = np.ones(len(perm), bool)
    change[1:] = (t[1:] != t[:-1]) | (b[1:] != b[:-1]) | (o[1:] != o[:-1])
    return perm, np.cumsum(change)


def _before_style(c_thread, c_order, c_op, c_sizes, t_thread, t_order, t_op, t_bytes):
    """Per process (thread >> 22): True where tuning lines come before their collective."""
    thread = np.concatenate([c_thread, t_thread])
    order = np.concatenate([c_order, t_order])
    is_t = np.concatenate([np.zeros(len(c_thread), bool), np.ones(len(t_thread), bool)])
    idx = np.concatenate([np.arange(len(c_thread)), np.arange(len(t_thread))])
    perm = np.lexsort((order, thread))
    thread, is_t, idx = thread[perm], is_t[perm], idx[perm]
    ti = np.flatnonzero(is_t)

    def hits(nb: np.ndarray) -> np.ndarray:
        ok = (nb >= 0) & (nb < len(thread))
        nbc = np.clip(nb, 0, len(thread) - 1)
        ok &= ~is_t[nbc] & (thread[nbc] == thread[ti])
        c = np.where(ok, idx[nbc], 0)
        t = idx[ti]
        same_op = (t_op[t] < 0) | (t_op[t] == c_op[c])
        size = (t_bytes[t] == c_sizes[0][c]) | (t_bytes[t] == c_sizes[1][c])
        return ok & same_op & size

    after, before = hits(ti - 1), hits(ti + 1)
    proc = thread[ti] >> 22
    procs, inv = np.unique(proc, return_inverse=True)
    n_after = np.bincount(inv, after, len(procs))
    n_before = np.bincount(inv, before, len(procs))
    return procs, n_before > n_after


def attach_tuning(c_thread, c_order, c_op, c_b1, c_b2, c_comm, t_thread, t_order, t_op,
                  t_bytes):
    """Index of the tuning record of each collective, -1 where none.

    One tuning line serves at most one collective per communicator (`c_comm`: int codes): a
    group call's collectives on several communicators share it, but an earlier collective
    of the same communicator that never got its own tuning line does not.

    thread: int64 ids with the process in the bits above 22; order: position in the log;
    op: NCCL collective code (-1 on tuning lines that name none); c_b1/c_b2: the collective's
    two candidate byte counts (count x elem, and that x nranks; -1 where unknown).
    """
    n_c = len(c_thread)
    out = np.full(n_c, _NONE)
    if n_c == 0 or len(t_thread) == 0:
        return out
    procs, before = _before_style(c_thread, c_order, c_op, (c_b1, c_b2), t_thread, t_order,
                                  t_op, t_bytes)
    c_before = np.zeros(n_c, bool)
    pos = np.searchsorted(procs, c_thread >> 22)
    hit = (pos < len(procs)) & (procs[np.minimum(pos, len(procs) - 1)] == c_thread >> 22)
    c_before[hit] = before[pos[hit]]
    # Probes: (size 1 | size 2) x (the collective's own name | "no name" tuning lines).
    wild = bool((t_op < 0).any())
    ci = np.arange(n_c)
    p_c, p_b, p_op = [ci, ci], [c_b1, c_b2], [c_op, c_op]
    if wild:
        p_c += [ci, ci]
        p_b += [c_b1, c_b2]
        p_op += [np.full(n_c, -1), np.full(n_c, -1)]
    p_c, p_b, p_op = np.concatenate(p_c), np.concatenate(p_b), np.concatenate(p_op)
    keep = p_b >= 0
    p_c, p_b, p_op = p_c[keep], p_b[keep], p_op[keep]
    n_p = len(p_c)
    thread = np.concatenate([c_thread[p_c], t_thread])
    nbytes = np.concatenate([p_b, t_bytes])
    op = np.concatenate([p_op, np.where(t_op < 0, -1, t_op)])
    order = np.concatenate([c_order[p_c], t_order])
    perm, grp = _group_order(thread, nbytes, op, order)
    is_t = perm >= n_p
    n = len(perm)
    # After: the first tuning record that follows in the same group.
    nxt = np.where(is_t, np.arange(n), n)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    probe_pos = np.flatnonzero(~is_t)
    after = np.append(nxt, n)[probe_pos + 1]
    a_ok = after < n
    a_ok[a_ok] = grp[after[a_ok]] == grp[probe_pos[a_ok]]
    # Before: the record just before in the group is a tuning record (each serves one call).
    prev = probe_pos - 1
    b_ok = prev >= 0
    b_ok[b_ok] = is_t[prev[b_ok]] & (grp[prev[b_ok]] == grp[probe_pos[b_ok]])
    probe_c = p_c[perm[probe_pos]]
    use_before = c_before[probe_c]
    chosen = np.where(use_before, prev, after)
    ok = np.where(use_before, b_ok, a_ok)
    if not ok.any():
        return out
    probe_c, chosen = probe_c[ok], chosen[ok]
    t_idx = perm[chosen] - n_p
    if np.bincount(probe_c, minlength=n_c).max() > 1:
        # Nearest candidate per collective (gathers have two sizes, wildcards two names).
        dist = np.abs(t_order[t_idx] - c_order[probe_c])
        sel = np.lexsort((dist, probe_c))
        probe_c, t_idx = probe_c[sel], t_idx[sel]
        first = np.ones(len(probe_c), bool)
        first[1:] = probe_c[1:] != probe_c[:-1]
        probe_c, t_idx = probe_c[first], t_idx[first]
    shared = np.bincount(t_idx, minlength=len(t_order))[t_idx] > 1
    if shared.any():
        # Per (tuning line, communicator): only the collective nearest to the line keeps it.
        sp_c, sp_t = probe_c[shared], t_idx[shared]
        d = np.abs(t_order[sp_t] - c_order[sp_c])
        sel = np.lexsort((d, c_comm[sp_c], sp_t))
        sp_c, sp_t = sp_c[sel], sp_t[sel]
        key_c = c_comm[sp_c]
        first = np.ones(len(sp_c), bool)
        first[1:] = (key_c[1:] != key_c[:-1]) | (sp_t[1:] != sp_t[:-1])
        probe_c = np.concatenate([probe_c[~shared], sp_c[first]])
        t_idx = np.concatenate([t_idx[~shared], sp_t[first]])
    out[probe_c] = t_idx
    return out
