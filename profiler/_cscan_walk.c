/* tuning_walk of `commscope.profiler._cscan` (see _cscan.c); tests/test_nccl_cscan.py holds
 * it to its numpy twin. */
#include "_cscan.h"

/* ---- The tuning join's walk (see _nccl_tuning.attach_tuning, whose numpy code is the
 * reference: the same groups, decided the same way, record by record in log order). ---- */

#define NARR 13
enum { PERM, C_TC, C_ORD, C_OP, C_B1, C_B2, C_COMM, P_GRP, T_TC, T_ORD, T_OP, T_BYTES, T_GRP };

/* Does tuning line j fit collective c (same name or none, one of its two sizes)? */
#define FITS(j, c) ((t_op[j] < 0 || t_op[j] == c_op[c]) && \
                    (t_bytes[j] == c_b1[c] || t_bytes[j] == c_b2[c]))
#define DIST(j, c) (t_ord[j] > c_ord[c] ? t_ord[j] - c_ord[c] : c_ord[c] - t_ord[j])

/* Keep tuning line j for collective c if it is nearer than the one it has. */
#define OFFER(c, j) do { if (out[c] < 0 || DIST(j, c) < DIST(out[c], c)) out[c] = (j); } while (0)

/* The walk; -1 when memory runs out. Arrays as in `tuning_walk`'s doc; out: n_c. */
static int walk(const int64_t **v, Py_ssize_t n_c, Py_ssize_t n_t, Py_ssize_t n_kinds,
                const int64_t *proc_of, Py_ssize_t n_thr, Py_ssize_t n_proc, Py_ssize_t n_grp,
                Py_ssize_t n_comm, int64_t *out) {
    const int64_t *perm = v[PERM], *c_tc = v[C_TC], *c_ord = v[C_ORD], *c_op = v[C_OP],
                  *c_b1 = v[C_B1], *c_b2 = v[C_B2], *c_comm = v[C_COMM], *p_grp = v[P_GRP],
                  *t_tc = v[T_TC], *t_ord = v[T_ORD], *t_op = v[T_OP], *t_bytes = v[T_BYTES],
                  *t_grp = v[T_GRP];
    Py_ssize_t n = n_c + n_t;
    int64_t *last = malloc(sizeof(int64_t) * (size_t)(n_thr + 3 * n_proc + 2 * n_grp + n_t + 1 +
                                                      n_c + 2 * n_comm));
    if (!last) return -1;
    int64_t *votes = last + n_thr; /* per process: has tuning lines, n_after, n_before */
    int64_t *g_last = votes + 3 * n_proc, *g_is_t = g_last + n_grp, *t_cnt = g_is_t + n_grp;
    int64_t *t_list = t_cnt + n_t + 1, *best_d = t_list + n_c, *best_c = best_d + n_comm;
    for (Py_ssize_t i = 0; i < n_thr; i++) last[i] = -1;
    for (Py_ssize_t i = 0; i < 3 * n_proc; i++) votes[i] = 0;
    for (Py_ssize_t i = 0; i < n_c; i++) out[i] = -1;
    /* Direction vote: a tuning line right after a fitting collective of its thread, or right
     * before one (numpy: the neighbours in (thread, order) order). */
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t x = perm[r], th = x < n_c ? c_tc[x] : t_tc[x - n_c], prev = last[th];
        int64_t *pv = votes + 3 * proc_of[th];
        if (x >= n_c) {
            pv[0] = 1;
            if (prev >= 0 && prev < n_c && FITS(x - n_c, prev)) pv[1]++;
        } else if (prev >= n_c && FITS(prev - n_c, x)) {
            pv[2]++;
        }
        last[th] = x;
    }
    for (Py_ssize_t i = 0; i < n_proc; i++) /* 1: tuning lines come before their collective */
        votes[3 * i] = votes[3 * i] && votes[3 * i + 2] > votes[3 * i + 1];
#define BEFORE(c) votes[3 * proc_of[c_tc[c]]]
    /* Before: a probe's previous record in its group, if a tuning line (numpy: the neighbour
     * in (group, order) order). Forwards; the group state changes for every probe. */
    for (Py_ssize_t g = 0; g < n_grp; g++) g_is_t[g] = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        int64_t x = perm[r];
        if (x >= n_c) {
            g_is_t[t_grp[x - n_c]] = 1;
            g_last[t_grp[x - n_c]] = x - n_c;
            continue;
        }
        for (int k = 0; k < n_kinds; k++) {
            int64_t g = p_grp[k * n_c + x];
            if (g < 0) continue;
            if (g_is_t[g] && BEFORE(x)) OFFER(x, g_last[g]);
            g_is_t[g] = 0;
        }
    }
    /* After: the group's next tuning line (backwards, the nearest one seen so far). */
    for (Py_ssize_t g = 0; g < n_grp; g++) g_last[g] = -1;
    for (Py_ssize_t r = n - 1; r >= 0; r--) {
        int64_t x = perm[r];
        if (x >= n_c) {
            g_last[t_grp[x - n_c]] = x - n_c;
            continue;
        }
        if (BEFORE(x)) continue;
        for (int k = 0; k < n_kinds; k++) {
            int64_t g = p_grp[k * n_c + x];
            if (g >= 0 && g_last[g] >= 0) OFFER(x, g_last[g]);
        }
    }
    /* A tuning line serves one collective per communicator: the nearest (collectives per
     * line listed by a counting sort; per line, the best per communicator). */
    for (Py_ssize_t j = 0; j <= n_t; j++) t_cnt[j] = 0;
    for (Py_ssize_t c = 0; c < n_c; c++)
        if (out[c] >= 0) t_cnt[out[c] + 1]++;
    for (Py_ssize_t j = 0; j < n_t; j++) t_cnt[j + 1] += t_cnt[j];
    for (Py_ssize_t c = 0; c < n_c; c++)
        if (out[c] >= 0) t_list[t_cnt[out[c]]++] = c;
    for (Py_ssize_t m = 0; m < n_comm; m++) best_d[m] = -1;
    for (Py_ssize_t j = 0, lo = 0; j < n_t; lo = t_cnt[j++]) {
        if (t_cnt[j] - lo < 2) continue;
        for (int64_t i = lo; i < t_cnt[j]; i++) {
            int64_t c = t_list[i], m = c_comm[c];
            if (best_d[m] < 0 || DIST(j, c) < best_d[m]) best_d[m] = DIST(j, c), best_c[m] = c;
        }
        for (int64_t i = lo; i < t_cnt[j]; i++)
            if (best_c[c_comm[t_list[i]]] != t_list[i]) out[t_list[i]] = -1;
        for (int64_t i = lo; i < t_cnt[j]; i++) best_d[c_comm[t_list[i]]] = -1;
    }
#undef BEFORE
    free(last);
    return 0;
}

CSCAN_DOC(cscan_walk_doc,
"tuning_walk(perm, c_tc, c_order, c_op, c_b1, c_b2, c_comm, p_grp, t_tc, t_order, t_op,\n"
"            t_bytes, t_grp, proc_of, n_grp, n_comm) -> bytearray of n_c int64\n\n"
"The tuning line of each collective (-1 none). int64 arrays: perm orders the collectives\n"
"then tuning lines (concatenated) by log order (unique orders); *_tc: dense thread codes;\n"
"p_grp: kinds x n_c probe group codes (-1 no probe; up to 4 kinds); t_grp: the tuning\n"
"lines' group codes; proc_of: process code per thread code; c_comm: codes below n_comm.");

PyObject *cscan_tuning_walk(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[NARR + 1], *res = NULL;
    Py_ssize_t n_grp, n_comm, len[NARR + 1];
    Py_buffer b[NARR + 1];
    int got = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOnn:tuning_walk", &o[0], &o[1], &o[2], &o[3],
                          &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12],
                          &o[13], &n_grp, &n_comm))
        return NULL;
    const int64_t *v[NARR + 1];
    for (; got < NARR + 1; got++) {
        if (PyObject_GetBuffer(o[got], &b[got], PyBUF_C_CONTIGUOUS) < 0) goto done;
        v[got] = b[got].buf;
        len[got] = b[got].len / (Py_ssize_t)sizeof(int64_t);
    }
    Py_ssize_t n_c = len[C_TC], n_t = len[T_TC], n_thr = len[NARR];
    Py_ssize_t n_kinds = n_c ? len[P_GRP] / n_c : 0;
    int ok = len[PERM] == n_c + n_t && len[P_GRP] == n_kinds * n_c && n_kinds <= 4 &&
             len[T_GRP] == n_t;
    for (int i = C_TC; i <= C_COMM; i++) ok &= len[i] == n_c;
    for (int i = T_TC; i <= T_BYTES; i++) ok &= len[i] == n_t;
    /* Every code must index its table: checked here, so the walk needs no checks. */
    for (Py_ssize_t i = 0; ok && i < n_c + n_t; i++) ok = v[PERM][i] >= 0 && v[PERM][i] < n_c + n_t;
    for (Py_ssize_t i = 0; ok && i < n_c; i++)
        ok = v[C_TC][i] >= 0 && v[C_TC][i] < n_thr && v[C_COMM][i] >= 0 && v[C_COMM][i] < n_comm;
    for (Py_ssize_t i = 0; ok && i < n_t; i++)
        ok = v[T_TC][i] >= 0 && v[T_TC][i] < n_thr && v[T_GRP][i] >= 0 && v[T_GRP][i] < n_grp;
    for (Py_ssize_t i = 0; ok && i < n_kinds * n_c; i++) ok = v[P_GRP][i] < n_grp;
    Py_ssize_t n_proc = 0;
    for (Py_ssize_t i = 0; ok && i < n_thr; i++) {
        ok = v[NARR][i] >= 0 && v[NARR][i] < n_thr;
        if (v[NARR][i] + 1 > n_proc) n_proc = v[NARR][i] + 1;
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "tuning_walk: array lengths or codes out of range");
        goto done;
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n_c * (Py_ssize_t)sizeof(int64_t));
    if (!out) goto done;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = walk(v, n_c, n_t, n_kinds, v[NARR], n_thr, n_proc, n_grp, n_comm,
               (int64_t *)PyByteArray_AS_STRING(out));
    Py_END_ALLOW_THREADS
    if (err) {
        Py_DECREF(out);
        PyErr_NoMemory();
    } else {
        res = out;
    }
done:
    while (got-- > 0) PyBuffer_Release(&b[got]);
    return res;
}
