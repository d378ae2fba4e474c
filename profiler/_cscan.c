/* Compiled kernels of the NCCL log parser; each has a numpy/Arrow twin that gives the same
 * results (the fallback when this module is not built, or COMMSCOPE_NO_NATIVE=1), and
 * tests/test_nccl_cscan.py holds them to it:
 *
 * - scan: the block scanner's kernel, one pass over a block instead of many numpy passes. It
 *   computes exactly what `_nccl_scan._numpy_kernel` computes, with the same rules: line
 *   bounds, the ` NCCL INFO ` / ` NCCL WARN ` markers, which lines go to the Python record
 *   parser, and the fields of clean COLL and TUNING records (labels checked by length and
 *   first byte, numbers of 1..18 decimal or 1..15 hex digits, token windows taken from the
 *   k-th space after the marker even past the line end, as numpy's `sp[k + i]` does).
 *   Prefixes, strings, chatter and plain-line classification stay in Python, shared.
 * - gather / take: Arrow large strings cut out of a buffer or taken by row (Arrow's take).
 * - strip_ansi: colour codes removed in place (`_nccl_log._strip_ansi`).
 * - tuning_walk: the tuning join's decisions (`_nccl_tuning.attach_tuning`).
 * - cumcount, merge_tail: group positions and the log-order merge of `_nccl_tables`.
 *
 * Only the Python C API and the buffer protocol: tables are int64 arrays in buffers from the
 * caller's allocator, viewed with numpy. The loops run with the GIL released, so the
 * scanner's worker threads run in parallel.
 *
 * Here: scan, the method table and module init; the others in _cscan_join.c and
 * _cscan_walk.c, the declarations they share in _cscan.h.
 */
#include "_cscan.h"
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define SENTINELS 24 /* spaces that start the padding (the scanner's PAD_BYTES) */
#define PAD 64       /* padding bytes after the block's lines */
#define MAX_OPS 32

/* Column counts of the result tables (keep in step with _nccl_scan._REC, _COLL, _TUN). */
#define REC_COLS 5   /* span_s, span_e, tok_s, line_start, line */
#define COLL_COLS 16 /* pos, op, op_count, count, dtype, redop, root, nranks, 4 x (s, e) */
#define TUN_COLS 8   /* pos, op, nbytes, channels, algo s/e, proto s/e */

typedef struct {
    int64_t *p;
    Py_ssize_t n, cap;
} vec;

/* Append to a growable array; -1 when memory runs out. */
static int push(vec *v, int64_t x) {
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap ? 2 * v->cap : 4096;
        int64_t *p = realloc(v->p, (size_t)cap * sizeof(int64_t));
        if (!p) return -1;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return 0;
}

typedef struct {
    const char *name[MAX_OPS];
    Py_ssize_t len[MAX_OPS];
    int n;
} ops_t;

/* 1: " NCCL INFO " at c, 2: " NCCL WARN ", 0: neither (c is a space; reads stay in the pad). */
static inline int marker_at(const uint8_t *a, Py_ssize_t c) {
    if (a[c + 1] != 'N' || a[c + 2] != 'C' || a[c + 3] != 'C' || a[c + 4] != 'L' ||
        a[c + 5] != ' ' || a[c + 10] != ' ')
        return 0;
    if (!memcmp(a + c + 6, "INFO", 4)) return 1;
    if (!memcmp(a + c + 6, "WARN", 4)) return 2;
    return 0;
}

/* Pass 1: newline positions, and markers as (position, line, kind) triples. Found through
 * the bytes '\n' and 'N' (16 at a time where SSE2 is there): a marker is a space before "N". */
static int find_lines(const uint8_t *a, Py_ssize_t size, vec *nl, vec *mk) {
    Py_ssize_t i = 0;
#ifdef __SSE2__
    const __m128i vn = _mm_set1_epi8('\n'), vN = _mm_set1_epi8('N');
    for (; i + 16 <= size; i += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(a + i));
        unsigned m = (unsigned)_mm_movemask_epi8(
            _mm_or_si128(_mm_cmpeq_epi8(x, vn), _mm_cmpeq_epi8(x, vN)));
        while (m) {
            Py_ssize_t p = i + __builtin_ctz(m);
            m &= m - 1;
            if (a[p] == '\n') {
                if (push(nl, p)) return -1;
            } else if (p >= 1 && a[p - 1] == ' ') {
                int kind = marker_at(a, p - 1);
                if (kind && (push(mk, p - 1) || push(mk, nl->n) || push(mk, kind))) return -1;
            }
        }
    }
#endif
    for (; i < size; i++) {
        if (a[i] == '\n') {
            if (push(nl, i)) return -1;
        } else if (a[i] == 'N' && i >= 1 && a[i - 1] == ' ') {
            int kind = marker_at(a, i - 1);
            if (kind && (push(mk, i - 1) || push(mk, nl->n) || push(mk, kind))) return -1;
        }
    }
    return 0;
}

/* Decimal digits a[s:e] (1..18 of them), as numpy's parse_decimal/parse_uint accept them. */
static inline int dec(const uint8_t *a, int64_t s, int64_t e, int64_t *out) {
    int64_t w = e - s, v = 0;
    if (w < 1 || w > 18) return 0;
    for (int64_t i = s; i < e; i++) {
        unsigned d = (unsigned)a[i] - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* Hex digits a[s:e] (1..15 of them, either case), as parse_hex accepts them. */
static inline int hex(const uint8_t *a, int64_t s, int64_t e, int64_t *out) {
    int64_t w = e - s, v = 0;
    if (w < 1 || w > 15) return 0;
    for (int64_t i = s; i < e; i++) {
        unsigned c = a[i], d;
        if (c - '0' < 10) d = c - '0';
        else if (c - 'a' < 6) d = c - 'a' + 10;
        else if (c - 'A' < 6) d = c - 'A' + 10;
        else return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

/* The spaces S[have..want] after S[have - 1] (S[0] is the marker's space). The padding's
 * sentinel spaces end every walk inside the buffer (reads of 16 bytes stay in the pad). */
static inline void spaces(const uint8_t *a, int64_t *S, int *have, int want) {
    int64_t p = S[*have - 1] + 1;
    int i = *have;
#ifdef __SSE2__
    const __m128i sp = _mm_set1_epi8(' ');
    while (i <= want) {
        unsigned m = (unsigned)_mm_movemask_epi8(
            _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(a + p)), sp));
        for (; m && i <= want; m &= m - 1) S[i++] = p + __builtin_ctz(m);
        p += 16;
    }
#else
    for (; i <= want; i++) {
        while (a[p] != ' ') p++;
        S[i] = p++;
    }
#endif
    if (want + 1 > *have) *have = want + 1;
}

#define ST(i) (S[i] + 1)
#define EN(i) (S[(i) + 1] < le ? S[(i) + 1] : le)
#define IN(i) (S[i] < le)
#define LABEL(i, w) (EN(i) - ST(i) == (int64_t)(sizeof(w) - 1) && a[ST(i)] == (uint8_t)(w)[0])
#define LAST(e) a[(e) - 1 > 0 ? (e) - 1 : 0]

/* A COLL record's fields (tokens from the marker: 0 "NCCL", 1 "INFO", 2 "<Coll>:", 3 "opCount",
 * ...); 1 and the fields in `out` when every check passes (see `_nccl_numbers.coll_fields`). */
static int coll(const uint8_t *a, const int64_t *S, int64_t le, int64_t *out) {
    if (!(LABEL(5, "sendbuff") && LABEL(7, "recvbuff") && LABEL(9, "count") &&
          LABEL(11, "datatype") && LABEL(13, "op") && LABEL(15, "root") && LABEL(17, "comm")))
        return 0;
    int64_t s19 = ST(19), e19 = EN(19);
    int sh = (e19 - s19 > 9) && a[s19] == '[' && a[s19 + 1] == 'n' && a[s19 + 7] == '=' &&
             LAST(e19) == ']';
    int64_t ss = ST(19 + sh), se = EN(19 + sh);
    if (!(se - ss == 6 && a[ss] == 's' && a[ss + 1] == 't')) return 0;
    int64_t vs = ST(20 + sh), ve = EN(20 + sh);
    if (!(IN(20 + sh) && !IN(21 + sh) && ve > vs)) return 0;
    int64_t opc, count, dt, redop, root, nranks = -1;
    int neg = a[ST(16)] == '-';
    if (!(hex(a, ST(4), EN(4), &opc) && dec(a, ST(10), EN(10), &count) &&
          dec(a, ST(12), EN(12), &dt) && dec(a, ST(14), EN(14), &redop) &&
          dec(a, ST(16) + neg, EN(16), &root)))
        return 0;
    if (sh && !dec(a, s19 + 8, e19 - 1, &nranks)) return 0;
    if (!(dt < 12 && redop <= 4)) return 0; /* 12: len(DTYPES) */
    out[2] = opc, out[3] = count, out[4] = dt, out[5] = redop, out[6] = neg ? -root : root;
    out[7] = nranks;
    out[8] = ST(6), out[9] = EN(6), out[10] = ST(8), out[11] = EN(8);
    out[12] = ST(18), out[13] = EN(18), out[14] = vs, out[15] = ve;
    return 1;
}

/* A TUNING record's fields (see `_nccl_numbers.tuning_fields`). */
static int tuning(const uint8_t *a, const int64_t *S, int64_t le, int64_t *out) {
    int64_t nbytes, lo = 0, hi = 0;
    if (!dec(a, ST(3), EN(3), &nbytes)) return 0;
    if (!(LABEL(5, "->") && LABEL(6, "Algo") && LABEL(8, "proto") && IN(9))) return 0;
    if (!(EN(7) > ST(7) && EN(9) > ST(9) && a[ST(7)] > '9' && a[ST(9)] > '9')) return 0;
    int64_t cs = ST(10), ce = EN(10);
    int has_ch = IN(10) && ce - cs > 21 && a[cs] == 'c' && a[cs + 7] == '{' &&
                 a[cs + 15] == '=' && a[cs + 16] == '{';
    if (has_ch) { /* `={lo..hi}`: lo ends at the first '.' (within 8 bytes), hi at the '}' */
        int width = -1;
        for (int j = 0; j < 8 && width < 0; j++)
            if (a[cs + 17 + j] == '.') width = j;
        has_ch = width >= 0 && dec(a, cs + 17, cs + 17 + width, &lo) &&
                 dec(a, cs + 19 + width, ce - 1, &hi) && LAST(ce) == '}';
    }
    out[2] = nbytes, out[3] = has_ch ? hi - lo + 1 : -1;
    out[4] = ST(7), out[5] = EN(7), out[6] = ST(9), out[7] = EN(9);
    return 1;
}

/* Index of a[s:s+n] in the op names, -1 if none. */
static inline int op_index(const ops_t *ops, const uint8_t *a, int64_t s, int64_t n) {
    for (int i = 0; i < ops->n; i++)
        if (ops->len[i] == n && !memcmp(a + s, ops->name[i], (size_t)n)) return i;
    return -1;
}

typedef struct {
    int64_t *lists; /* 3 columns of capacity n_lines: plain, python, chatter lines */
    int64_t *rec, *coll, *tun; /* column-major, capacity n_markers each */
    Py_ssize_t n_lists[3], n_rec, n_coll, n_tun, cap_lines, cap_mk;
} out_t;

/* The last space in a[lo:hi], or -1. */
static inline int64_t last_space(const uint8_t *a, int64_t lo, int64_t hi) {
#ifdef __GLIBC__
    const uint8_t *p = hi > lo ? memrchr(a + lo, ' ', (size_t)(hi - lo)) : NULL;
    return p ? p - a : -1;
#else
    while (--hi >= lo)
        if (a[hi] == ' ') return hi;
    return -1;
#endif
}

/* Where the `host:pid:tid [dev]` prefix text before the marker space c may begin: the two
 * tokens before it within the line (see `_nccl_scan._prefix_spans`). */
static void prefix_span(const uint8_t *a, int64_t ls, int64_t c, int64_t *span_s, int64_t *tok_s) {
    int64_t p1 = last_space(a, ls, c), p2;
    if (p1 < 0) { /* no space before the marker in this line: an empty span */
        *span_s = c;
        *tok_s = ls;
        return;
    }
    p2 = last_space(a, ls, p1);
    *tok_s = *span_s = p2 >= 0 ? p2 + 1 : ls;
}

/* Pass 2: per line, what the numpy kernel decides (see `_nccl_scan._numpy_kernel`). */
static void classify(const uint8_t *a, const ops_t *ops, const vec *nl, const vec *mk,
                     out_t *o) {
    Py_ssize_t n_lines = nl->n, n_mk = mk->n / 3, mi = 0;
    int64_t *plain = o->lists, *pyl = o->lists + o->cap_lines, *chat = pyl + o->cap_lines;
    for (Py_ssize_t line = 0; line < n_lines; line++) {
        int64_t ls = line ? nl->p[line - 1] + 1 : 0, e = nl->p[line];
        int64_t le = (e > 0 && a[e - 1] == '\r') ? e - 1 : e;
        Py_ssize_t j = mi;
        while (j < n_mk && mk->p[3 * j + 1] == line) j++;
        int bare = a[ls] == 'N' && a[ls + 1] == 'C' && a[ls + 2] == 'C' && a[ls + 3] == 'L' &&
                   a[ls + 4] == ' ';
        Py_ssize_t cnt = (j - mi) + bare, m = mi;
        mi = j;
        if (cnt == 0) {
            plain[o->n_lists[0]++] = line;
            continue;
        }
        if (cnt > 1 || bare || mk->p[3 * m + 2] == 2) { /* several, bare, or WARN */
            pyl[o->n_lists[1]++] = line;
            continue;
        }
        int64_t S[24];
        int have = 1;
        S[0] = mk->p[3 * m];
        spaces(a, S, &have, 3);
        int64_t s2 = ST(2), e2 = EN(2), w2 = e2 - s2;
        int op = -1;
        if (IN(2) && w2 >= 5 && w2 <= 14 && LAST(e2) == ':') op = op_index(ops, a, s2, w2 - 1);
        if (op < 0) {
            chat[o->n_lists[2]++] = line;
            continue;
        }
        spaces(a, S, &have, 5);
        int64_t s3 = ST(3), s4 = ST(4);
        int is_coll = a[s3] == 'o' && a[s3 + 2] == 'C' && S[4] - s3 == 7;
        int is_tun = !is_coll && a[s4] == 'B' && a[s4 + 4] == 's' && S[5] - s4 == 5;
        if (!is_coll && !is_tun) {
            pyl[o->n_lists[1]++] = line;
            continue;
        }
        Py_ssize_t r = o->n_rec++, cm = o->cap_mk;
        int64_t span_s, tok_s, f[COLL_COLS];
        prefix_span(a, ls, S[0], &span_s, &tok_s);
        o->rec[r] = span_s, o->rec[cm + r] = S[0], o->rec[2 * cm + r] = tok_s;
        o->rec[3 * cm + r] = ls, o->rec[4 * cm + r] = line;
        spaces(a, S, &have, is_coll ? 23 : 11);
        int ok = is_coll ? coll(a, S, le, f) : tuning(a, S, le, f);
        if (!ok) {
            pyl[o->n_lists[1]++] = line;
            continue;
        }
        f[0] = r, f[1] = op;
        int64_t *t = is_coll ? o->coll : o->tun;
        Py_ssize_t i = is_coll ? o->n_coll++ : o->n_tun++;
        for (int c = 0; c < (is_coll ? COLL_COLS : TUN_COLS); c++) t[c * cm + i] = f[c];
    }
}

PyDoc_STRVAR(scan_doc,
"scan(block, ops, alloc) -> (n_lines, n_markers, counts, tables)\n\n"
"Scan a padded block (lines ending in '\\n', then PAD_BYTES). `ops`: the NCCL collective\n"
"names as bytes (a record's op code indexes them); `alloc(n)`: a writable buffer of n bytes.\n"
"`tables` (from alloc) holds int64 tables one after the other, column-major: lines\n"
"(2 x n_lines: start, end), lists (3 x n_lines: plain, python and chatter lines), rec, coll,\n"
"tun (REC/COLL/TUN_COLS x n_markers); `counts` gives the rows used of each list and table.");

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj, *ops_obj, *alloc;
    if (!PyArg_ParseTuple(args, "OO!O:scan", &obj, &PyTuple_Type, &ops_obj, &alloc))
        return NULL;
    ops_t ops;
    ops.n = (int)PyTuple_GET_SIZE(ops_obj);
    if (ops.n > MAX_OPS) return PyErr_Format(PyExc_ValueError, "at most %d op names", MAX_OPS);
    for (int i = 0; i < ops.n; i++) {
        PyObject *b = PyTuple_GET_ITEM(ops_obj, i);
        if (!PyBytes_Check(b)) return PyErr_Format(PyExc_TypeError, "op names must be bytes");
        ops.name[i] = PyBytes_AS_STRING(b);
        ops.len[i] = PyBytes_GET_SIZE(b);
    }
    Py_buffer view, tv;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *a = view.buf;
    Py_ssize_t size = view.len - PAD;
    int bad = size < 0;
    for (Py_ssize_t i = 0; !bad && i < SENTINELS; i++) bad = a[size + i] != ' ';
    if (bad || (size > 0 && a[size - 1] != '\n')) {
        PyBuffer_Release(&view);
        return PyErr_Format(PyExc_ValueError, "scan: the block must be lines and PAD_BYTES");
    }
    vec nl = {0}, mk = {0};
    PyObject *tables = NULL, *res = NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = find_lines(a, size, &nl, &mk);
    Py_END_ALLOW_THREADS
    if (err) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t n_lines = nl.n, n_mk = mk.n / 3;
    Py_ssize_t words = 5 * n_lines + (REC_COLS + COLL_COLS + TUN_COLS) * n_mk;
    tables = alloc_buffer(alloc, words * (Py_ssize_t)sizeof(int64_t), &tv);
    if (!tables) goto done;
    int64_t *ln = tv.buf;
    out_t o = {0};
    o.lists = ln + 2 * n_lines;
    o.rec = o.lists + 3 * n_lines;
    o.coll = o.rec + REC_COLS * n_mk;
    o.tun = o.coll + COLL_COLS * n_mk;
    o.cap_lines = n_lines;
    o.cap_mk = n_mk;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n_lines; i++) {
        int64_t e = nl.p[i];
        ln[i] = i ? nl.p[i - 1] + 1 : 0;
        ln[n_lines + i] = (e > 0 && a[e - 1] == '\r') ? e - 1 : e;
    }
    classify(a, &ops, &nl, &mk, &o);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&tv);
    res = Py_BuildValue("nn(nnnnnn)O", n_lines, n_mk, o.n_lists[0], o.n_lists[1], o.n_lists[2],
                        o.n_rec, o.n_coll, o.n_tun, tables);
done:
    free(nl.p);
    free(mk.p);
    Py_XDECREF(tables);
    PyBuffer_Release(&view);
    return res;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"gather", cscan_gather, METH_VARARGS, cscan_gather_doc},
    {"take", cscan_take, METH_VARARGS, cscan_take_doc},
    {"strip_ansi", cscan_strip_ansi, METH_O, cscan_strip_doc},
    {"cumcount", cscan_cumcount, METH_VARARGS, cscan_cumcount_doc},
    {"merge_tail", cscan_merge_tail, METH_VARARGS, cscan_merge_doc},
    {"tuning_walk", cscan_tuning_walk, METH_VARARGS, cscan_walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {
    PyModuleDef_HEAD_INIT, "_cscan",
    "Compiled kernel of the NCCL log block scanner (see commscope.profiler._nccl_scan).", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cscan(void) { return PyModule_Create(&mod); }
