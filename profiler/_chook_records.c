/* `Records`, the session's packed-record buffer of the compiled hook (see _chook.c): a growable
 * int64 array; the hook appends a record with one memcpy, `take()` hands the writer everything
 * so far as bytes. It carries the session's flush threshold (`flush_at`), so the hook compares
 * two C integers per call. Also here: appending a record to every recording session. */
#include "_chook.h"
#include <string.h>

/* ---------------------------------------------------------------------------- Records */

COLD int records_grow(Records *r, Py_ssize_t extra) {
    Py_ssize_t cap = r->cap ? r->cap : 1024;
    while (cap < r->n + extra) cap *= 2;
    int64_t *p = PyMem_Realloc(r->data, (size_t)cap * sizeof(int64_t));
    if (!p) { PyErr_NoMemory(); return -1; }
    r->data = p;
    r->cap = cap;
    return 0;
}

static void records_dealloc(Records *r) {
    PyMem_Free(r->data);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *records_frombytes(Records *r, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    if (b.len % 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "Records.frombytes: length not a multiple of 8");
        return NULL;
    }
    if (records_reserve(r, b.len / 8) < 0) { PyBuffer_Release(&b); return NULL; }
    memcpy(r->data + r->n, b.buf, (size_t)b.len);
    r->n += b.len / 8;
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *records_take(Records *r, PyObject *unused) {
    /* Everything appended so far; runs under the GIL, so no record is half-written. */
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->data, r->n * 8);
    if (out) r->n = 0;
    return out;
}

static Py_ssize_t records_len(Records *r) { return r->n; }

static PyObject *records_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Records *r = (Records *)PyType_GenericNew(type, args, kw);
    if (r) r->flush_at = INT64_MAX; /* never, until the session sets it */
    return (PyObject *)r;
}

static PyObject *records_get_flush_at(Records *r, void *unused) {
    return PyLong_FromLongLong(r->flush_at);
}

static int records_set_flush_at(Records *r, PyObject *v, void *unused) {
    if (!v) { PyErr_SetString(PyExc_AttributeError, "flush_at cannot be deleted"); return -1; }
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    /* Beyond int64 ("never flush by count", e.g. sys.maxsize events): the nearest int64. */
    r->flush_at = overflow > 0 ? INT64_MAX : overflow < 0 ? INT64_MIN : x;
    return 0;
}

static PyGetSetDef records_getset[] = {
    {"flush_at", (getter)records_get_flush_at, (setter)records_set_flush_at,
     "Length (int64 values) at which the session flushes; clamped to int64.", NULL},
    {NULL}};

static PyMethodDef records_methods[] = {
    {"frombytes", (PyCFunction)records_frombytes, METH_O,
     "Append native-endian int64 values (whole records)."},
    {"take", (PyCFunction)records_take, METH_NOARGS,
     "Remove and return every value appended so far, as bytes."},
    {NULL}};

static PySequenceMethods records_seq = {.sq_length = (lenfunc)records_len};

PyTypeObject RecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "commscope.profiler._chook.Records",
    .tp_basicsize = sizeof(Records),
    .tp_dealloc = (destructor)records_dealloc,
    .tp_as_sequence = &records_seq,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A session's packed records (int64 values, _columns.FIELDS per record).",
    .tp_methods = records_methods,
    .tp_getset = records_getset,
    .tp_new = records_new,
};

/* ---------------------------------------------------------------------------- appending */

/* The Records buffer of session `s` (new reference): `s._cols.ints`. */
static PyObject *records_of(PyObject *s) {
    PyObject *cols = PyObject_GetAttr(s, s_cols);
    PyObject *ints = cols ? PyObject_GetAttr(cols, s_ints) : NULL;
    Py_XDECREF(cols);
    return ints;
}

/* Append `recd` to a buffer that is not a Records (an array('q') with `flush_at`, as the
 * pure-Python path makes); 1 if it is due for a flush, 0 if not, -1 on error. */
COLD static int append_other(PyObject *ints, const int64_t *recd) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)recd, NFIELDS * 8);
    PyObject *ok = b ? PyObject_CallMethodOneArg(ints, s_frombytes, b) : NULL;
    Py_XDECREF(b);
    if (!ok) return -1;
    Py_DECREF(ok);
    Py_ssize_t len = PyObject_Size(ints);
    PyObject *n = len < 0 ? NULL : PyLong_FromSsize_t(len);
    PyObject *at = n ? PyObject_GetAttr(ints, s_flush_at) : NULL;
    int due = at ? PyObject_RichCompareBool(n, at, Py_GE) : -1;
    Py_XDECREF(n); Py_XDECREF(at);
    return due;
}

/* The Records buffer of session `s` (new reference, or NULL with an error), looked up and kept
 * as the hook's cache (see hook_append_all). */
COLD static PyObject *lookup_records(Hook *h, PyObject *s) {
    PyObject *ints = records_of(s);
    if (!ints) return NULL;
    PyObject *wr = PyWeakref_NewRef(s, NULL);
    if (wr) {
        cache_replace((PyObject **const[]){&h->cached_session, &h->cached_ints},
                      (PyObject *const[]){wr, Py_NewRef(ints)}, 2);
    } else {
        PyErr_Clear(); /* a session without weak references: looked up every call */
    }
    return ints;
}

/* `s.flush(blocking=False)`: its buffer reached the flush threshold. 0, or -1 with an error. */
COLD static int flush_session(PyObject *s) {
    PyObject *meth = PyObject_GetAttr(s, s_flush);
    PyObject *kw = meth ? Py_BuildValue("{O:O}", s_blocking, Py_False) : NULL;
    PyObject *e = PyTuple_New(0);
    PyObject *r = (meth && kw && e) ? PyObject_Call(meth, e, kw) : NULL;
    Py_XDECREF(meth); Py_XDECREF(kw); Py_XDECREF(e);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static inline int is_cached(Hook *h, PyObject *s) {
    return h->cached_session && PyWeakref_GET_OBJECT(h->cached_session) == s;
}

/* See _chook.h. A session's buffer is looked up once and kept (a session keeps its ColumnBuffer
 * for life); the session itself is held by a weak reference, so a closed session is not kept
 * alive by the cache. */
int hook_append_all(Hook *h, const int64_t *recd) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(h->sessions); i++) {
        PyObject *s = PyList_GET_ITEM(h->sessions, i);
        Py_INCREF(s);
        PyObject *ints = is_cached(h, s) ? Py_NewRef(h->cached_ints) : lookup_records(h, s);
        int due = -1;
        if (ints && Py_IS_TYPE(ints, &RecordsType)) {
            Records *r = (Records *)ints;
            due = records_reserve(r, NFIELDS);
            if (due == 0) {
                memcpy(r->data + r->n, recd, NFIELDS * sizeof(int64_t));
                r->n += NFIELDS;
                due = r->n >= r->flush_at;
            }
        } else if (ints) {
            due = append_other(ints, recd);
        }
        Py_XDECREF(ints);
        if (UNLIKELY(due > 0)) due = flush_session(s);
        Py_DECREF(s);
        if (UNLIKELY(due < 0)) return -1;
    }
    return 0;
}
