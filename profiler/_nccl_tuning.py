"""Attach NCCL tuning lines to their collectives with sorted-array joins (no per-record loop).

NCCL logs a tuning decision (`AllReduce: 2048 Bytes -> Algo RING proto LL ...`) on the thread
that enqueued the collective. Recent versions print it after the COLL line (several collectives
of one group call may share one tuning line), older ones before it. Within each thread the
records are ordered by position in the log; a collective matches a tuning line of the same
collective name (or a tuning line that names none) whose byte count is count x element size, or
that times the group size (gathers). The direction is chosen per process by which neighbour
relation the log shows more often.

The probes and their group codes are made with numpy either way; the decisions are then taken
by the compiled kernel's walk over the records in log order (`_cscan.tuning_walk`, ~3x less
time) when it is built, else by the sorted arrays below, the reference a test holds it to.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from . import _nccl_scan

__all__ = ["attach_tuning"]

_NONE = np.int64(-1)


def _codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense int64 codes of `x` (hashing, no sort) and how many distinct values."""
    codes, uniq = pd.factorize(x)
    return codes.astype(np.int64, copy=False), len(uniq)


def _by_group(order: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Permutation that sorts by (group, order); ties keep their input order.

    The records come in a few runs already in log order, so the stable sort by order is a
    merge; the stable sort by small dense group codes is a radix sort (16-bit keys)."""
    perm = np.argsort(order, kind="stable")
    g = group[perm]
    if n_groups <= (1 << 16):
        g = g.astype(np.uint16)
    return perm[np.argsort(g, kind="stable")]


def _group_codes(tcode, n_threads, op, nbytes):
    """A code per (thread, op, bytes) combination, and a bound on the codes. Small-int fields
    are combined arithmetically; only when that exceeds 16 bits are the codes made dense."""
    bcode, n_bytes = _codes(nbytes)
    lo = int(op.min(initial=0))
    n_ops = int(op.max(initial=0)) - lo + 1
    if n_threads * n_ops * n_bytes >= (1 << 62):  # would overflow: combine in two steps
        key, n_keys = _codes(tcode * n_ops + (op - lo))
        return _codes(key * n_bytes + bcode)
    key = (tcode * n_ops + (op - lo)) * n_bytes + bcode
    bound = n_threads * n_ops * n_bytes
    return (key, bound) if bound <= (1 << 16) else _codes(key)


def _before_style(c_tc, c_order, c_op, c_sizes, t_tc, t_order, t_op, t_bytes, n_threads,
                  proc_of):
    """Per thread code: True where its process's tuning lines come before their collective.
    c_tc/t_tc: dense thread codes; proc_of: thread code -> dense process code."""
    tc = np.concatenate([c_tc, t_tc])
    n_c = len(c_tc)
    perm = _by_group(np.concatenate([c_order, t_order]), tc, n_threads)
    tc = tc[perm]
    is_t = perm >= n_c
    idx = np.where(is_t, perm - n_c, perm)
    ti = np.flatnonzero(is_t)
    t = idx[ti]
    t_op, t_bytes, t_tc = t_op[t], t_bytes[t], tc[ti]

    def hits(nb: np.ndarray) -> np.ndarray:
        ok = (nb >= 0) & (nb < len(tc))
        nbc = np.clip(nb, 0, len(tc) - 1)
        ok &= ~is_t[nbc] & (tc[nbc] == t_tc)
        c = np.where(ok, idx[nbc], 0)
        same_op = (t_op < 0) | (t_op == c_op[c])
        size = (t_bytes == c_sizes[0][c]) | (t_bytes == c_sizes[1][c])
        return ok & same_op & size

    after, before = hits(ti - 1), hits(ti + 1)
    proc, n_procs = proc_of[t_tc], int(proc_of.max(initial=-1)) + 1
    vote = np.bincount(proc, before, n_procs) > np.bincount(proc, after, n_procs)
    return vote[proc_of]


def _walk(c_tc, c_order, c_op, c_b1, c_b2, c_comm, t_tc, t_order, t_op, t_bytes, p_c, kinds,
          grp, n_grp, proc_of):
    """The rest of `attach_tuning` by the compiled kernel: one walk over the records in log
    order that decides as the sorted arrays below do (the same probes and group codes). None
    where it does not apply (two records at one position in the log, negative comm codes)."""
    if len(c_comm) and int(c_comm.min()) < 0:
        return None
    order = np.concatenate([c_order, t_order])
    perm = np.argsort(order, kind="stable")
    if len(perm) > 1 and not bool((np.diff(order[perm]) > 0).all()):
        return None
    n_c = len(c_tc)
    p_grp = np.full(len(kinds) * n_c, -1, np.int64)  # kind k's probe of c at k * n_c + c
    kind = np.repeat(np.arange(len(kinds)), kinds)
    p_grp[kind * n_c + p_c] = grp[:len(p_c)]
    i64 = lambda x: np.ascontiguousarray(x, np.int64)  # noqa: E731
    out = _nccl_scan._CSCAN.tuning_walk(*map(i64, (
        perm, c_tc, c_order, c_op, c_b1, c_b2, c_comm, p_grp, t_tc, t_order, t_op, t_bytes,
        grp[len(p_c):], proc_of)), int(n_grp), int(c_comm.max(initial=0)) + 1)
    return np.frombuffer(out, np.int64)


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
    codes, threads = pd.factorize(np.concatenate([c_thread, t_thread]))
    tc, n_threads = codes.astype(np.int64, copy=False), len(threads)
    c_tc, t_tc = tc[:n_c], tc[n_c:]
    # Thread code -> dense process code (the process is the thread id's bits above 22).
    proc_of = np.unique(threads.astype(np.int64, copy=False) >> 22, return_inverse=True)[1]
    # The per-thread-code direction, needed unless the compiled walk decides everything.
    style = functools.partial(_before_style, c_tc, c_order, c_op, (c_b1, c_b2), t_tc, t_order,
                              t_op, t_bytes, n_threads, proc_of)
    vote = None
    if _nccl_scan._CSCAN is None:
        # It runs on a second thread while this one sorts (numpy releases the GIL).
        pool = ThreadPoolExecutor(1)
        vote = pool.submit(style)
        pool.shutdown(wait=False)
    # Probes: (size 1 | size 2) x (the collective's own name | "no name" tuning lines).
    wild = bool((t_op < 0).any())
    i1, i2 = np.flatnonzero(c_b1 >= 0), np.flatnonzero(c_b2 >= 0)
    p_c, p_b = [i1, i2], [c_b1[i1], c_b2[i2]]
    p_op = [c_op[i1], c_op[i2]]
    if wild:
        p_c += [i1, i2]
        p_b += p_b[:2]
        p_op += [np.full(len(i1), -1), np.full(len(i2), -1)]
    kinds = [len(x) for x in p_c]
    p_c, p_b, p_op = np.concatenate(p_c), np.concatenate(p_b), np.concatenate(p_op)
    n_p = len(p_c)
    grp, n_grp = _group_codes(np.concatenate([c_tc[p_c], t_tc]), n_threads,
                              np.concatenate([p_op, np.where(t_op < 0, -1, t_op)]),
                              np.concatenate([p_b, t_bytes]))
    if vote is None:
        got = _walk(c_tc, c_order, c_op, c_b1, c_b2, c_comm, t_tc, t_order, t_op, t_bytes,
                    p_c, kinds, grp, n_grp, proc_of)
        if got is not None:
            return got
    # Group by group, each group in log order (the group order itself does not matter: every
    # step below only looks within a group).
    perm = _by_group(np.concatenate([c_order[p_c], t_order]), grp, n_grp)
    grp = grp[perm]
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
    use_before = (style() if vote is None else vote.result())[c_tc[probe_c]]
    chosen = np.where(use_before, prev, after)
    ok = np.where(use_before, b_ok, a_ok)
    if not ok.any():
        return out
    probe_c, chosen = probe_c[ok], chosen[ok]
    t_idx = perm[chosen] - n_p
    n_cand = np.bincount(probe_c, minlength=n_c)
    if n_cand.max() > 1:
        # Nearest candidate per collective (gathers have two sizes, wildcards two names). All
        # of a collective's candidates lie on one side of it, so distances tie only between
        # probes that found the same tuning line.
        multi = n_cand[probe_c] > 1
        m_c, m_t = probe_c[multi], t_idx[multi]
        dist = np.abs(t_order[m_t] - c_order[m_c])
        best = np.full(n_c, np.iinfo(np.int64).max)
        np.minimum.at(best, m_c, dist)
        win = dist == best[m_c]
        one = np.full(n_c, _NONE)
        one[probe_c[~multi]] = t_idx[~multi]
        one[m_c[win]] = m_t[win]
        probe_c = np.flatnonzero(one >= 0)
        t_idx = one[probe_c]
    shared = np.bincount(t_idx, minlength=len(t_order))[t_idx] > 1
    if shared.any():
        # Per (tuning line, communicator): only the collective nearest to the line keeps it
        # (the collectives sharing a line lie on one side of it: no ties).
        sp_c, sp_t = probe_c[shared], t_idx[shared]
        d = np.abs(t_order[sp_t] - c_order[sp_c])
        key, n_key = _codes(sp_t * (int(c_comm.max()) + 1) + c_comm[sp_c])
        best = np.full(n_key, np.iinfo(np.int64).max)
        np.minimum.at(best, key, d)
        win = d == best[key]
        probe_c = np.concatenate([probe_c[~shared], sp_c[win]])
        t_idx = np.concatenate([t_idx[~shared], sp_t[win]])
    out[probe_c] = t_idx
    return out
