/* The join helpers of `commscope.profiler._cscan` (see _cscan.c): Arrow large strings cut out
 * of a buffer or taken by row, colour codes stripped in place, group positions and the
 * log-order merge. Each has a numpy/Arrow twin; tests/test_nccl_cscan.py holds them to it.
 */
#include "_cscan.h"

/* Spans [s[j], e[j]) of `src` concatenated into new Arrow large-string buffers (offsets and
 * data) from `alloc`, for j = idx[i] (idx NULL: j = i; j < 0: an empty row), i < n; `total` is
 * their summed length (the callers have checked every span). Returns (offsets, data). */
static PyObject *concat_spans(PyObject *alloc, const char *src, Py_ssize_t n, Py_ssize_t total,
                              const int64_t *s, const int64_t *e, const int64_t *idx) {
    Py_buffer ov, dv;
    PyObject *offs = alloc_buffer(alloc, (n + 1) * (Py_ssize_t)sizeof(int64_t), &ov);
    if (!offs) return NULL;
    PyObject *data = alloc_buffer(alloc, total, &dv);
    if (!data) {
        PyBuffer_Release(&ov);
        Py_DECREF(offs);
        return NULL;
    }
    int64_t *o = ov.buf;
    char *d = dv.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        o[i] = at;
        int64_t j = idx ? idx[i] : i;
        if (j < 0) continue;
        memcpy(d + at, src + s[j], (size_t)(e[j] - s[j]));
        at += e[j] - s[j];
    }
    o[n] = at;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&ov);
    PyBuffer_Release(&dv);
    PyObject *res = PyTuple_Pack(2, offs, data);
    Py_DECREF(offs);
    Py_DECREF(data);
    return res;
}

CSCAN_DOC(cscan_gather_doc,
"gather(buf, starts, ends, alloc) -> (offsets, data)\n\n"
"The byte spans buf[starts[i]:ends[i]] (int64 arrays) concatenated: `data` and the n + 1\n"
"int64 `offsets` of an Arrow large_string array, in buffers from `alloc(nbytes)`. Spans may\n"
"repeat and come in any order; one outside `buf` raises ValueError.");

/* gather's and take's arguments: three buffers (`bytes_at` is the byte string, the others
 * int64 arrays) and the allocator. 0 with all three taken, or -1 with none held. */
static int three_buffers(PyObject *args, const char *format, int bytes_at, Py_buffer v[3],
                         PyObject **alloc) {
    PyObject *objs[3];
    if (!PyArg_ParseTuple(args, format, &objs[0], &objs[1], &objs[2], alloc)) return -1;
    for (int got = 0; got < 3; got++)
        if (PyObject_GetBuffer(objs[got], &v[got],
                               got == bytes_at ? PyBUF_SIMPLE : PyBUF_C_CONTIGUOUS) < 0) {
            while (got-- > 0) PyBuffer_Release(&v[got]);
            return -1;
        }
    return 0;
}

PyObject *cscan_gather(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *alloc, *res = NULL;
    Py_buffer v[3];
    if (three_buffers(args, "OOOO:gather", 0, v, &alloc) < 0) return NULL;
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
    res = concat_spans(alloc, v[0].buf, n, total, s, e, NULL);
done:
    for (int i = 0; i < 3; i++) PyBuffer_Release(&v[i]);
    return res;
}

CSCAN_DOC(cscan_take_doc,
"take(offsets, data, idx, alloc) -> (offsets, data)\n\n"
"Arrow large strings: rows idx (int64; -1: an empty row, for a null) of the strings given\n"
"by int64 `offsets` (n + 1) into `data`, in new buffers from `alloc(nbytes)`. What\n"
"`Array.take` does, without gathering the offsets first.");

PyObject *cscan_take(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *alloc, *res = NULL;
    Py_buffer v[3];
    if (three_buffers(args, "OOOO:take", 1, v, &alloc) < 0) return NULL;
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
    res = concat_spans(alloc, v[1].buf, n, total, so, so + 1, idx);  /* row j: so[j]..so[j+1] */
done:
    for (int i = 0; i < 3; i++) PyBuffer_Release(&v[i]);
    return res;
}

CSCAN_DOC(cscan_strip_doc,
"strip_ansi(buf) -> n\n\n"
"Remove colour codes (ESC '[' [0-9;?]* letter, as _nccl_log._ANSI_RE) from the writable\n"
"`buf` in place; returns the new length (the caller truncates there).");

PyObject *cscan_strip_ansi(PyObject *self, PyObject *arg) {
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

CSCAN_DOC(cscan_cumcount_doc,
"cumcount(codes, n_groups) -> bytearray of int64\n\n"
"Position of each row within its group (codes: int64 in [0, n_groups)), in row order.");

PyObject *cscan_cumcount(PyObject *self, PyObject *args) {
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

CSCAN_DOC(cscan_merge_doc,
"merge_tail(arr, n_first, ins)\n\n"
"In place: the last len(ins) items of the writable array `arr` are moved in among its first\n"
"n_first, item j before the first item ins[j] (ins: int64, non-decreasing, in [0, n_first]).\n"
"What arr[perm] gives for two runs in order, without a new array.");

PyObject *cscan_merge_tail(PyObject *self, PyObject *args) {
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
