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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* defines _GNU_SOURCE on Linux: glibc's memrchr */
#include <stdint.h>
#include <string.h>
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

/* A writable buffer of n bytes from the caller's allocator (`alloc(n)`, e.g. Arrow's pool,
 * which reuses memory: fresh pages cost more than the scan here); NULL on error. */
static PyObject *alloc_buffer(PyObject *alloc, Py_ssize_t n, Py_buffer *view) {
    PyObject *buf = PyObject_CallFunction(alloc, "n", n);
    if (!buf) return NULL;
    if (PyObject_GetBuffer(buf, view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    if (view->len < n) {
        PyBuffer_Release(view);
        Py_DECREF(buf);
        PyErr_SetString(PyExc_ValueError, "alloc returned a short buffer");
        return NULL;
    }
    return buf;
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

PyDoc_STRVAR(gather_doc,
"gather(buf, starts, ends, alloc) -> (offsets, data)\n\n"
"The byte spans buf[starts[i]:ends[i]] (int64 arrays) concatenated: `data` and the n + 1\n"
"int64 `offsets` of an Arrow large_string array, in buffers from `alloc(nbytes)`. Spans may\n"
"repeat and come in any order; one outside `buf` raises ValueError.");

static PyObject *gather(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[3], *alloc, *offs = NULL, *data = NULL, *res = NULL;
    Py_buffer v[3], ov, dv;
    int got = 0, have_o = 0, have_d = 0;
    if (!PyArg_ParseTuple(args, "OOOO:gather", &objs[0], &objs[1], &objs[2], &alloc))
        return NULL;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(objs[got], &v[got], got ? PyBUF_C_CONTIGUOUS : PyBUF_SIMPLE) < 0)
            goto done;
    Py_ssize_t n = v[1].len / (Py_ssize_t)sizeof(int64_t), total = 0;
    if (v[2].len != v[1].len || v[1].len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "gather: starts and ends must be int64 of one length");
        goto done;
    }
    const int64_t *s = v[1].buf, *e = v[2].buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < 0 || e[i] < s[i] || e[i] > v[0].len) {
            PyErr_SetString(PyExc_ValueError, "gather: span outside the buffer");
            goto done;
        }
        total += e[i] - s[i];
    }
    if (!(offs = alloc_buffer(alloc, (n + 1) * (Py_ssize_t)sizeof(int64_t), &ov))) goto done;
    have_o = 1;
    if (!(data = alloc_buffer(alloc, total, &dv))) goto done;
    have_d = 1;
    int64_t *o = ov.buf;
    char *d = dv.buf;
    const char *b = v[0].buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        o[i] = at;
        memcpy(d + at, b + s[i], (size_t)(e[i] - s[i]));
        at += e[i] - s[i];
    }
    o[n] = at;
    Py_END_ALLOW_THREADS
    res = PyTuple_Pack(2, offs, data);
done:
    if (have_o) PyBuffer_Release(&ov);
    if (have_d) PyBuffer_Release(&dv);
    Py_XDECREF(offs);
    Py_XDECREF(data);
    while (got-- > 0) PyBuffer_Release(&v[got]);
    return res;
}

PyDoc_STRVAR(take_doc,
"take(offsets, data, idx, alloc) -> (offsets, data)\n\n"
"Arrow large strings: rows idx (int64; -1: an empty row, for a null) of the strings given\n"
"by int64 `offsets` (n + 1) into `data`, in new buffers from `alloc(nbytes)`. What\n"
"`Array.take` does, without gathering the offsets first.");

static PyObject *take(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[3], *alloc, *offs = NULL, *data = NULL, *res = NULL;
    Py_buffer v[3], ov, dv;
    int got = 0, have_o = 0, have_d = 0;
    if (!PyArg_ParseTuple(args, "OOOO:take", &objs[0], &objs[1], &objs[2], &alloc)) return NULL;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(objs[got], &v[got], got == 1 ? PyBUF_SIMPLE : PyBUF_C_CONTIGUOUS))
            goto done;
    const int64_t *so = v[0].buf, *idx = v[2].buf;
    Py_ssize_t n_src = v[0].len / (Py_ssize_t)sizeof(int64_t) - 1, total = 0;
    Py_ssize_t n = v[2].len / (Py_ssize_t)sizeof(int64_t);
    int ok = n_src >= 0 && so[0] >= 0 && so[n_src] <= v[1].len;
    for (Py_ssize_t i = 0; ok && i < n_src; i++) ok = so[i] <= so[i + 1];
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        ok = idx[i] >= -1 && idx[i] < n_src;
        if (ok && idx[i] >= 0) total += so[idx[i] + 1] - so[idx[i]];
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "take: offsets or rows out of range");
        goto done;
    }
    if (!(offs = alloc_buffer(alloc, (n + 1) * (Py_ssize_t)sizeof(int64_t), &ov))) goto done;
    have_o = 1;
    if (!(data = alloc_buffer(alloc, total, &dv))) goto done;
    have_d = 1;
    int64_t *o = ov.buf;
    char *d = dv.buf;
    const char *src = v[1].buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        o[i] = at;
        if (idx[i] < 0) continue;
        int64_t s0 = so[idx[i]], len = so[idx[i] + 1] - s0;
        memcpy(d + at, src + s0, (size_t)len);
        at += len;
    }
    o[n] = at;
    Py_END_ALLOW_THREADS
    res = PyTuple_Pack(2, offs, data);
done:
    if (have_o) PyBuffer_Release(&ov);
    if (have_d) PyBuffer_Release(&dv);
    Py_XDECREF(offs);
    Py_XDECREF(data);
    while (got-- > 0) PyBuffer_Release(&v[got]);
    return res;
}

PyDoc_STRVAR(strip_doc,
"strip_ansi(buf) -> n\n\n"
"Remove colour codes (ESC '[' [0-9;?]* letter, as _nccl_log._ANSI_RE) from the writable\n"
"`buf` in place; returns the new length (the caller truncates there).");

static PyObject *strip_ansi(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_WRITABLE) < 0) return NULL;
    uint8_t *a = v.buf;
    Py_ssize_t n = v.len, w = 0, i = 0;
    Py_BEGIN_ALLOW_THREADS
    while (i < n) {
        const uint8_t *e = memchr(a + i, 0x1b, (size_t)(n - i));
        Py_ssize_t j = e ? e - a : n, k = j + 1;
        if (w != i) memmove(a + w, a + i, (size_t)(j - i));
        w += j - i;
        if (j >= n) break;
        if (k < n && a[k] == '[') {
            for (k++; k < n && ((a[k] >= '0' && a[k] <= '9') || a[k] == ';' || a[k] == '?'); k++)
                ;
            if (k < n && ((a[k] | 0x20) >= 'a' && (a[k] | 0x20) <= 'z')) {
                i = k + 1; /* a code: dropped */
                continue;
            }
        }
        a[w++] = 0x1b; /* an ESC that starts no code: kept */
        i = j + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&v);
    return PyLong_FromSsize_t(w);
}

PyDoc_STRVAR(cumcount_doc,
"cumcount(codes, n_groups) -> bytearray of int64\n\n"
"Position of each row within its group (codes: int64 in [0, n_groups)), in row order.");

static PyObject *cumcount(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj, *out = NULL;
    Py_ssize_t n_groups;
    Py_buffer v;
    if (!PyArg_ParseTuple(args, "On:cumcount", &obj, &n_groups)) return NULL;
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    const int64_t *code = v.buf;
    Py_ssize_t n = v.len / (Py_ssize_t)sizeof(int64_t);
    int ok = n_groups >= 0;
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = code[i] >= 0 && code[i] < n_groups;
    int64_t *cnt = ok ? calloc((size_t)n_groups + 1, sizeof(int64_t)) : NULL;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "cumcount: codes out of range");
    } else if (!cnt) {
        PyErr_NoMemory();
    } else if ((out = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t)))) {
        int64_t *o = (int64_t *)PyByteArray_AS_STRING(out);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) o[i] = cnt[code[i]]++;
        Py_END_ALLOW_THREADS
    }
    free(cnt);
    PyBuffer_Release(&v);
    return out;
}

PyDoc_STRVAR(merge_doc,
"merge_tail(arr, n_first, ins)\n\n"
"In place: the last len(ins) items of the writable array `arr` are moved in among its first\n"
"n_first, item j before the first item ins[j] (ins: int64, non-decreasing, in [0, n_first]).\n"
"What arr[perm] gives for two runs in order, without a new array.");

static PyObject *merge_tail(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a_obj, *i_obj;
    Py_ssize_t n_first;
    Py_buffer a, iv;
    if (!PyArg_ParseTuple(args, "OnO:merge_tail", &a_obj, &n_first, &i_obj)) return NULL;
    if (PyObject_GetBuffer(a_obj, &a, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(i_obj, &iv, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    Py_ssize_t sz = a.itemsize, n = sz > 0 ? a.len / sz : 0;
    Py_ssize_t k = iv.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *ins = iv.buf;
    int ok = sz > 0 && n_first >= 0 && n_first + k == n;
    for (Py_ssize_t j = 0; ok && j < k; j++)
        ok = ins[j] >= (j ? ins[j - 1] : 0) && ins[j] <= n_first;
    char *tmp = ok && k ? malloc((size_t)(k * sz)) : NULL;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "merge_tail: bad lengths or insertion points");
    } else if (k && !tmp) {
        PyErr_NoMemory();
    } else if (k) {
        char *p = a.buf;
        Py_BEGIN_ALLOW_THREADS
        memcpy(tmp, p + n_first * sz, (size_t)(k * sz));
        /* From the back: each run of the first items moves right past the items before it. */
        for (Py_ssize_t j = k - 1, end = n_first; j >= 0; end = ins[j--]) {
            memmove(p + (ins[j] + j + 1) * sz, p + ins[j] * sz, (size_t)((end - ins[j]) * sz));
            memcpy(p + (ins[j] + j) * sz, tmp + j * sz, (size_t)sz);
        }
        Py_END_ALLOW_THREADS
    }
    free(tmp);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&a);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

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

PyDoc_STRVAR(walk_doc,
"tuning_walk(perm, c_tc, c_order, c_op, c_b1, c_b2, c_comm, p_grp, t_tc, t_order, t_op,\n"
"            t_bytes, t_grp, proc_of, n_grp, n_comm) -> bytearray of n_c int64\n\n"
"The tuning line of each collective (-1 none). int64 arrays: perm orders the collectives\n"
"then tuning lines (concatenated) by log order (unique orders); *_tc: dense thread codes;\n"
"p_grp: kinds x n_c probe group codes (-1 no probe; up to 4 kinds); t_grp: the tuning\n"
"lines' group codes; proc_of: process code per thread code; c_comm: codes below n_comm.");

static PyObject *tuning_walk(PyObject *self, PyObject *args) {
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"gather", gather, METH_VARARGS, gather_doc},
    {"take", take, METH_VARARGS, take_doc},
    {"strip_ansi", strip_ansi, METH_O, strip_doc},
    {"cumcount", cumcount, METH_VARARGS, cumcount_doc},
    {"merge_tail", merge_tail, METH_VARARGS, merge_doc},
    {"tuning_walk", tuning_walk, METH_VARARGS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mod = {
    PyModuleDef_HEAD_INIT, "_cscan",
    "Compiled kernel of the NCCL log block scanner (see commscope.profiler._nccl_scan).", -1,
    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cscan(void) { return PyModule_Create(&mod); }
