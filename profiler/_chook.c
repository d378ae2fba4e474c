/* Compiled hot path of commscope's hook (optional; `_wrappers.make_wrapper` is the reference).
 *
 * `Hook` is the callable installed in place of a simple torch.distributed collective
 * (all_reduce, all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single, barrier ...).
 * For the common call -- blocking, no CUDA timing, group and counter already known -- it does in
 * C what the Python wrapper's fast path does: entry tuple in the busy slot while the call runs,
 * then one packed int64 record appended to each session's `Records` buffer. Every other case
 * (async, CUDA timing, unknown group, unusual arguments, values beyond int64) is handed to the
 * Python wrapper `slow` before anything is recorded, or to `raw`/`fail` after the call, so the
 * two paths write the same rows. `tests/test_native_hook.py` compares them field by field.
 *
 * `Records` (_chook_records.c) is a growable int64 buffer, the session's `ColumnBuffer.ints`.
 */
#include "_chook.h"
#include <pythread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define MAXP 8     /* parameters of the hooked signatures */

/* ---------------------------------------------------------------------------- Hook */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *dict;
    PyObject *orig, *slow, *busy, *sessions, *counters, *names, *key_code, *phase_var;
    PyObject *fail, *raw, *api_idx, *params;
    int nparams, i_count, i_other, other_is_out, i_group, i_async;
    /* The last (dtype, group info, phase) and its key code and step (see make_wrapper). */
    PyObject *last_dt, *last_gi, *last_ph;
    int64_t last_code, last_step;
    PyObject *cached_session, *cached_ints; /* a weak reference to the session; its buffer */
    PyObject *rec_dict; /* rec.__dict__: cuda_timing and seq are read from it directly */
} Hook;

static PyObject *s_numel, *s_dtype, *s_cuda_timing, *s_seq, *s_cols, *s_ints, *s_flush_at,
    *s_flush, *s_frombytes, *s_blocking;

/* The Records buffer of session `s` (new reference): `s._cols.ints`. */
static PyObject *records_of(PyObject *s) {
    PyObject *cols = PyObject_GetAttr(s, s_cols);
    PyObject *ints = cols ? PyObject_GetAttr(cols, s_ints) : NULL;
    Py_XDECREF(cols);
    return ints;
}

/* Append one record to every recording session; flush those over their threshold. A session's
 * buffer is looked up once and kept (a session keeps its ColumnBuffer for life); the session
 * itself is held by a weak reference, so a closed session is not kept alive by the cache. */
static int append_all(Hook *h, const int64_t *recd) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(h->sessions); i++) {
        PyObject *s = PyList_GET_ITEM(h->sessions, i);
        Py_INCREF(s);
        PyObject *ints;
        if (h->cached_session && PyWeakref_GET_OBJECT(h->cached_session) == s) {
            ints = Py_NewRef(h->cached_ints);
        } else {
            if (!(ints = records_of(s))) { Py_DECREF(s); return -1; }
            PyObject *wr = PyWeakref_NewRef(s, NULL);
            if (wr) { /* swap the whole cache, then release the old values (that can run code) */
                PyObject *old_s = h->cached_session, *old_i = h->cached_ints;
                h->cached_session = wr;
                h->cached_ints = Py_NewRef(ints);
                Py_XDECREF(old_s); Py_XDECREF(old_i);
            } else {
                PyErr_Clear(); /* a session without weak references: looked up every call */
            }
        }
        Py_ssize_t len;
        if (Py_IS_TYPE(ints, &RecordsType)) {
            Records *r = (Records *)ints;
            if (records_reserve(r, NFIELDS) < 0) { Py_DECREF(ints); Py_DECREF(s); return -1; }
            memcpy(r->data + r->n, recd, NFIELDS * sizeof(int64_t));
            r->n += NFIELDS;
            len = r->n;
        } else { /* array('q') when a session was opened before this module loaded */
            PyObject *b = PyBytes_FromStringAndSize((const char *)recd, NFIELDS * 8);
            PyObject *ok = b ? PyObject_CallMethodOneArg(ints, s_frombytes, b) : NULL;
            Py_XDECREF(b);
            if (!ok) { Py_DECREF(ints); Py_DECREF(s); return -1; }
            Py_DECREF(ok);
            len = PyObject_Size(ints);
            if (len < 0) { Py_DECREF(ints); Py_DECREF(s); return -1; }
        }
        Py_DECREF(ints);
        /* `_flush_at` may exceed any size ("never flush by count"): compare as Python does. */
        PyObject *fa = PyObject_GetAttr(s, s_flush_at);
        if (!fa) { Py_DECREF(s); return -1; }
        int overflow;
        long long flush_at = PyLong_AsLongLongAndOverflow(fa, &overflow);
        Py_DECREF(fa);
        if (flush_at == -1 && PyErr_Occurred()) { Py_DECREF(s); return -1; }
        if (overflow < 0 || (overflow == 0 && (long long)len >= flush_at)) {
            PyObject *meth = PyObject_GetAttr(s, s_flush);
            PyObject *kw = meth ? Py_BuildValue("{O:O}", s_blocking, Py_False) : NULL;
            PyObject *e = PyTuple_New(0);
            PyObject *r = (meth && kw && e) ? PyObject_Call(meth, e, kw) : NULL;
            Py_XDECREF(meth); Py_XDECREF(kw); Py_XDECREF(e);
            if (!r) { Py_DECREF(s); return -1; }
            Py_DECREF(r);
        }
        Py_DECREF(s);
    }
    return 0;
}

static PyObject *hook_vectorcall(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *tid = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (!tid) return NULL;
    int inside = PyDict_Contains(h->busy, tid);
    if (inside != 0 || PyList_GET_SIZE(h->sessions) == 0) {
        Py_DECREF(tid);
        if (inside < 0) return NULL;
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    }
    PyObject *cuda = PyDict_GetItemWithError(h->rec_dict, s_cuda_timing); /* borrowed */
    int timed = cuda ? PyObject_IsTrue(cuda) : -1;
    if (timed != 0) { Py_DECREF(tid); if (timed < 0) PyErr_Clear(); goto slow; }
    int64_t t0 = now_ns();

    /* Bind the arguments to the extractor's parameters; anything unusual -> Python. */
    PyObject *bound[MAXP] = {NULL};
    if (nargs > h->nparams) { Py_DECREF(tid); goto slow; }
    for (Py_ssize_t i = 0; i < nargs; i++) bound[i] = args[i];
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t j = 0; j < nk; j++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, j);
            int found = -1;
            for (int p = 0; p < h->nparams; p++) {
                PyObject *pn = PyTuple_GET_ITEM(h->params, p);
                if (pn == name || PyUnicode_Compare(pn, name) == 0) { found = p; break; }
            }
            if (found < 0 || bound[found]) { PyErr_Clear(); Py_DECREF(tid); goto slow; }
            bound[found] = args[nargs + j];
        }
    }
    PyObject *async_obj = h->i_async >= 0 && bound[h->i_async] ? bound[h->i_async] : Py_False;
    int is_async = PyObject_IsTrue(async_obj);
    if (is_async != 0) { PyErr_Clear(); Py_DECREF(tid); goto slow; }
    PyObject *group = bound[h->i_group] ? bound[h->i_group] : Py_None;

    PyObject *tensor = NULL, *n = NULL, *other = NULL, *dtype = NULL;
    if (h->i_count >= 0) {
        tensor = bound[h->i_count];
        if (!tensor || (h->i_other >= 0 && !bound[h->i_other])) { Py_DECREF(tid); goto slow; }
        n = PyObject_CallMethodNoArgs(tensor, s_numel);
        if (n && h->i_other >= 0) other = PyObject_CallMethodNoArgs(bound[h->i_other], s_numel);
        if (n && (h->i_other < 0 || other)) dtype = PyObject_GetAttr(tensor, s_dtype);
        if (!dtype) {
            PyErr_Clear();
            Py_XDECREF(n); Py_XDECREF(other); Py_DECREF(tid);
            goto slow;
        }
    } else { /* barrier: no tensor */
        n = PyLong_FromLong(0);
        dtype = Py_NewRef(Py_None);
    }
    if (!other) other = Py_NewRef(n);
    PyObject *in_n = h->other_is_out ? n : other, *out_n = h->other_is_out ? other : n;

    PyObject *gi = PyDict_GetItemWithError(h->names, group); /* borrowed */
    PyObject *ctr = (gi && PyTuple_Check(gi) && PyTuple_GET_SIZE(gi) > 0)
        ? PyDict_GetItemWithError(h->counters, PyTuple_GET_ITEM(gi, 0)) : NULL;
    if (!ctr) { /* first call in this group (or an unhashable group): Python resolves it */
        PyErr_Clear();
        Py_DECREF(n); Py_DECREF(other); Py_DECREF(dtype); Py_DECREF(tid);
        goto slow;
    }
    Py_INCREF(gi);
    PyObject *pg_seq = PyIter_Next(ctr);
    PyObject *seq_it = pg_seq ? PyDict_GetItemWithError(h->rec_dict, s_seq) : NULL;
    PyObject *seq = seq_it ? PyIter_Next(seq_it) : NULL;
    PyObject *ph = NULL;
    if (seq && PyContextVar_Get(h->phase_var, Py_None, &ph) < 0) ph = NULL;
    PyObject *info = NULL, *entry = NULL, *t0_obj = NULL;
    if (ph) {
        info = PyTuple_Pack(4, dtype, n, in_n, out_n); /* what entry_row reads */
        t0_obj = PyLong_FromLongLong(t0);
    }
    if (info && t0_obj) entry = PyTuple_Pack(7, h->api_idx, t0_obj, info, gi, pg_seq, seq, ph);
    Py_XDECREF(info); Py_XDECREF(t0_obj);
    if (!entry || PyDict_SetItem(h->busy, tid, entry) < 0) {
        Py_XDECREF(entry); Py_XDECREF(pg_seq); Py_XDECREF(seq); Py_XDECREF(ph);
        Py_DECREF(gi); Py_DECREF(n); Py_DECREF(other); Py_DECREF(dtype); Py_DECREF(tid);
        /* As the Python wrapper: a failure to record never stops the collective (the other
         * ranks wait for it); only KeyboardInterrupt and the like propagate. */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    }

    PyObject *res = PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    int64_t t1 = now_ns();
    PyObject *ret = res;
    if (!res) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (PyDict_DelItem(h->busy, tid) < 0) PyErr_Clear();
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb) PyException_SetTraceback(ev, tb);
        PyObject *r = PyObject_CallFunctionObjArgs(h->fail, entry, tid, ev, NULL);
        if (r) {
            Py_DECREF(r);
            PyErr_Restore(et, ev, tb);
        } else { /* recording the error failed: raise that, chained to the call's error */
            PyObject *nt, *nv, *ntb;
            PyErr_Fetch(&nt, &nv, &ntb);
            PyErr_NormalizeException(&nt, &nv, &ntb);
            if (nv && ev) PyException_SetContext(nv, Py_NewRef(ev));
            PyErr_Restore(nt, nv, ntb);
            Py_XDECREF(et); Py_XDECREF(ev); Py_XDECREF(tb);
        }
        goto done;
    }
    if (PyDict_DelItem(h->busy, tid) < 0) { Py_CLEAR(ret); goto done; }

    int64_t code, step;
    if (h->last_dt == dtype && h->last_gi == gi && h->last_ph == ph) {
        code = h->last_code;
        step = h->last_step;
    } else {
        PyObject *k = PyObject_CallFunctionObjArgs(h->key_code, h->api_idx, dtype, gi, ph, NULL);
        if (!k) { Py_CLEAR(ret); goto done; }
        int ok = PyTuple_Check(k) && PyTuple_GET_SIZE(k) == 2 &&
                 as_i64(PyTuple_GET_ITEM(k, 0), &code) == 0 &&
                 as_i64(PyTuple_GET_ITEM(k, 1), &step) == 0;
        Py_DECREF(k);
        if (!ok) goto raw;
        /* Replace the whole cache before releasing the old values: a release can run code
         * (and let another thread in), which must never see half a cache. */
        PyObject *old_dt = h->last_dt, *old_gi = h->last_gi, *old_ph = h->last_ph;
        h->last_dt = Py_NewRef(dtype);
        h->last_gi = Py_NewRef(gi);
        h->last_ph = Py_NewRef(ph);
        h->last_code = code;
        h->last_step = step;
        Py_XDECREF(old_dt); Py_XDECREF(old_gi); Py_XDECREF(old_ph);
    }
    {
        int64_t recd[NFIELDS];
        recd[0] = t0; recd[1] = t1;
        if (as_i64(n, &recd[2]) || as_i64(in_n, &recd[3]) || as_i64(out_n, &recd[4]) ||
            as_i64(pg_seq, &recd[5]) || as_i64(seq, &recd[6]) || as_i64(tid, &recd[7]))
            goto raw;
        recd[8] = step;
        recd[9] = code;
        if (append_all(h, recd) < 0) Py_CLEAR(ret);
        goto done;
    }
raw: { /* a field that is not an int64: an ordinary row instead (as the Python path) */
        PyObject *t1_obj = PyLong_FromLongLong(t1);
        PyObject *r = t1_obj ? PyObject_CallFunctionObjArgs(h->raw, entry, tid, t1_obj, NULL)
                             : NULL;
        Py_XDECREF(t1_obj);
        if (!r) Py_CLEAR(ret);
        else Py_DECREF(r);
    }
done:
    Py_DECREF(entry); Py_DECREF(pg_seq); Py_DECREF(seq); Py_DECREF(ph); Py_DECREF(gi);
    Py_DECREF(n); Py_DECREF(other); Py_DECREF(dtype); Py_DECREF(tid);
    return ret;

slow:
    return PyObject_Vectorcall(h->slow, args, nargsf, kwnames);
}

static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"orig", "slow", "rec", "api_idx", "params", "count", "other",
                             "other_is_out", "group", "async_op", "key_code", "phase_var",
                             "fail", "raw", NULL};
    PyObject *orig, *slow, *rec, *api_idx, *params, *key_code, *phase_var, *fail, *raw;
    int i_count, i_other, other_is_out, i_group, i_async;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO!iipiiOOOO", kwlist, &orig, &slow, &rec,
                                     &api_idx, &PyTuple_Type, &params, &i_count, &i_other,
                                     &other_is_out, &i_group, &i_async, &key_code, &phase_var,
                                     &fail, &raw))
        return NULL;
    Py_ssize_t np = PyTuple_GET_SIZE(params);
    if (np > MAXP || i_group < 0 || i_group >= np || i_count >= np || i_other >= np ||
        i_async >= np || (i_other >= 0 && i_count < 0)) {
        PyErr_SetString(PyExc_ValueError, "Hook: bad parameter layout");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < np; i++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(params, i))) {
            PyErr_SetString(PyExc_TypeError, "Hook: params must be str");
            return NULL;
        }
    PyObject *busy = PyObject_GetAttrString(rec, "busy");
    PyObject *sessions = busy ? PyObject_GetAttrString(rec, "sessions") : NULL;
    PyObject *counters = sessions ? PyObject_GetAttrString(rec, "counters") : NULL;
    PyObject *groups = counters ? PyObject_GetAttrString(rec, "groups") : NULL;
    PyObject *names = groups ? PyObject_GetAttrString(groups, "_names") : NULL;
    PyObject *rec_dict = names ? PyObject_GetAttrString(rec, "__dict__") : NULL;
    Py_XDECREF(groups);
    if (!rec_dict || !PyDict_Check(rec_dict) || !PyDict_Check(busy) || !PyList_Check(sessions) ||
        !PyDict_Check(counters) || !PyDict_Check(names) || !PyContextVar_CheckExact(phase_var)) {
        Py_XDECREF(busy); Py_XDECREF(sessions); Py_XDECREF(counters); Py_XDECREF(names);
        Py_XDECREF(rec_dict);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Hook: unexpected recorder");
        return NULL;
    }
    Hook *h = (Hook *)type->tp_alloc(type, 0);
    if (!h) {
        Py_DECREF(busy); Py_DECREF(sessions); Py_DECREF(counters); Py_DECREF(names);
        Py_DECREF(rec_dict);
        return NULL;
    }
    h->vectorcall = (vectorcallfunc)hook_vectorcall;
    h->orig = Py_NewRef(orig); h->slow = Py_NewRef(slow);
    h->busy = busy; h->sessions = sessions; h->counters = counters; h->names = names;
    h->rec_dict = rec_dict;
    h->key_code = Py_NewRef(key_code); h->phase_var = Py_NewRef(phase_var);
    h->fail = Py_NewRef(fail); h->raw = Py_NewRef(raw);
    h->api_idx = Py_NewRef(api_idx); h->params = Py_NewRef(params);
    h->nparams = (int)np; h->i_count = i_count; h->i_other = i_other;
    h->other_is_out = other_is_out; h->i_group = i_group; h->i_async = i_async;
    return (PyObject *)h;
}

/* Every object field, once: traverse and clear expand the same list. */
#define HOOK_OBJECTS(X) X(dict) X(orig) X(slow) X(busy) X(sessions) X(counters) X(names) \
    X(key_code) X(phase_var) X(fail) X(raw) X(api_idx) X(params) X(last_dt) X(last_gi) X(last_ph) \
    X(cached_session) X(cached_ints) X(rec_dict)

static int hook_traverse(Hook *h, visitproc visit, void *arg) {
#define VISIT(field) Py_VISIT(h->field);
    HOOK_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int hook_clear(Hook *h) {
#define CLEAR(field) Py_CLEAR(h->field);
    HOOK_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void hook_dealloc(Hook *h) {
    PyObject_GC_UnTrack(h);
    hook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyGetSetDef hook_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict},
    {NULL}};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "commscope.profiler._chook.Hook",
    .tp_basicsize = sizeof(Hook),
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_setattro = PyObject_GenericSetAttr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A torch.distributed collective with commscope's recording hook (compiled).",
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_getset = hook_getset,
    .tp_dictoffset = offsetof(Hook, dict),
    .tp_new = hook_new,
};

/* ---------------------------------------------------------------------------- module */

static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_chook",
                                 "Compiled hot path of commscope's recording hook.", -1, NULL};

PyMODINIT_FUNC PyInit__chook(void) {
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL
    INTERN(s_numel, "numel"); INTERN(s_dtype, "dtype"); INTERN(s_cuda_timing, "cuda_timing");
    INTERN(s_seq, "seq"); INTERN(s_cols, "_cols"); INTERN(s_ints, "ints");
    INTERN(s_flush_at, "_flush_at"); INTERN(s_flush, "flush"); INTERN(s_frombytes, "frombytes");
    INTERN(s_blocking, "blocking");
#undef INTERN
    if (PyType_Ready(&RecordsType) < 0 || PyType_Ready(&HookType) < 0) return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0 ||
        PyModule_AddObjectRef(m, "Hook", (PyObject *)&HookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
