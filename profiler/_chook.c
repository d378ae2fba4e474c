/* Compiled hot path of commscope's hook (optional; `_wrappers.make_wrapper` is the reference).
 *
 * `Hook` is the callable installed in place of a simple torch.distributed collective
 * (all_reduce, all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single, barrier ...).
 * For the common call -- blocking, no CUDA timing, group and counter already known, every field
 * an int64 -- it does in C what the Python wrapper's fast path does, without making a Python
 * object of its own: the entry is a slot of the recorder's `Busy` map while the call runs (a
 * timed flush writes it as 'started'), the counters are `Counter`s read unboxed, and one packed
 * int64 record is appended to each session's `Records` buffer, whose flush threshold it carries.
 * Every other case (async, CUDA timing, unknown group, unusual arguments, values beyond int64)
 * is handed to the Python wrapper `slow` before anything is recorded, or to `raw`/`fail` after
 * the call, so the two paths write the same rows. `tests/test_native_hook.py` compares them
 * field by field.
 *
 * `Records` is in _chook_records.c, `Busy` and `Counter` in _chook_state.c.
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
    /* torch.Tensor, TensorBase's dtype getter and numel method (or NULL): called directly on
     * an exact Tensor while the type is unmodified (its version tag is still `tensor_tag`). */
    PyObject *tensor_type, *dtype_get, *numel_meth;
    unsigned int tensor_tag;
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

/* Append `recd` to a buffer that is not a Records (an array('q') with `flush_at`, as the
 * pure-Python path makes); 1 if it is due for a flush, 0 if not, -1 on error. */
static int append_other(PyObject *ints, const int64_t *recd) {
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
        int due;
        if (Py_IS_TYPE(ints, &RecordsType)) {
            Records *r = (Records *)ints;
            due = records_reserve(r, NFIELDS);
            if (due == 0) {
                memcpy(r->data + r->n, recd, NFIELDS * sizeof(int64_t));
                r->n += NFIELDS;
                due = r->n >= r->flush_at;
            }
        } else {
            due = append_other(ints, recd);
        }
        Py_DECREF(ints);
        if (due > 0) {
            PyObject *meth = PyObject_GetAttr(s, s_flush);
            PyObject *kw = meth ? Py_BuildValue("{O:O}", s_blocking, Py_False) : NULL;
            PyObject *e = PyTuple_New(0);
            PyObject *r = (meth && kw && e) ? PyObject_Call(meth, e, kw) : NULL;
            Py_XDECREF(meth); Py_XDECREF(kw); Py_XDECREF(e);
            due = r ? 0 : -1;
            Py_XDECREF(r);
        }
        Py_DECREF(s);
        if (due < 0) return -1;
    }
    return 0;
}

/* The next value of a pg_seq/seq counter as an int64: a Counter's unboxed, anything else's
 * through next(). -1 when there is none (an exception may be set). */
static int take_next(PyObject *it, int64_t *out) {
    if (Py_IS_TYPE(it, &CounterType)) {
        Counter *c = (Counter *)it;
        if (c->next == INT64_MAX) return -1;
        *out = c->next++;
        return 0;
    }
    PyObject *v = PyIter_Next(it);
    if (!v) return -1;
    int r = as_i64(v, out);
    Py_DECREF(v);
    return r;
}

/* Call `fn(entry, tid, extra)` for a call the C path cannot record itself (see make_wrapper's
 * `fail` and `raw`); a new reference to its result, or NULL. */
static PyObject *call_back(PyObject *fn, const BusySlot *slot, PyObject *extra) {
    PyObject *entry = entry_tuple(slot);
    PyObject *tid = entry ? PyLong_FromUnsignedLong(slot->tid) : NULL;
    PyObject *r = (tid && extra) ? PyObject_CallFunctionObjArgs(fn, entry, tid, extra, NULL) : NULL;
    Py_XDECREF(entry); Py_XDECREF(tid);
    return r;
}

/* Bind the arguments to the extractor's parameters; 0, or -1 for anything unusual. */
static int bind(Hook *h, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                PyObject **bound) {
    if (nargs > h->nparams) return -1;
    for (Py_ssize_t i = 0; i < nargs; i++) bound[i] = args[i];
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nk; j++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, j);
        int found = -1;
        for (int p = 0; p < h->nparams && found < 0; p++) /* names are interned: identity */
            if (PyTuple_GET_ITEM(h->params, p) == name) found = p;
        for (int p = 0; p < h->nparams && found < 0; p++)
            if (PyUnicode_Compare(PyTuple_GET_ITEM(h->params, p), name) == 0) found = p;
        if (found < 0 || bound[found]) { PyErr_Clear(); return -1; }
        bound[found] = args[nargs + j];
    }
    return 0;
}

static inline int plain_tensor(Hook *h, PyObject *t) {
    return h->tensor_type && Py_TYPE(t) == (PyTypeObject *)h->tensor_type &&
           ((PyTypeObject *)h->tensor_type)->tp_version_tag == h->tensor_tag;
}

/* t.numel() (new reference): the method itself on a plain Tensor, skipping the lookup. */
static PyObject *numel_of(Hook *h, PyObject *t) {
    if (plain_tensor(h, t)) return PyObject_Vectorcall(h->numel_meth, &t, 1, NULL);
    return PyObject_CallMethodNoArgs(t, s_numel);
}

/* The element counts of the call's tensor(s) as int64 and its dtype (new reference); -1 for
 * anything the Python path should handle (no exception left set). */
static int sizes(Hook *h, PyObject **bound, BusySlot *slot) {
    if (h->i_count < 0) { /* barrier: no tensor */
        slot->n = slot->in = slot->out = 0;
        slot->dtype = Py_NewRef(Py_None);
        return 0;
    }
    PyObject *tensor = bound[h->i_count];
    if (!tensor || (h->i_other >= 0 && !bound[h->i_other])) return -1;
    int64_t n, other;
    PyObject *o = numel_of(h, tensor);
    int bad = !o || as_i64(o, &n);
    Py_XDECREF(o);
    if (!bad && h->i_other >= 0) {
        o = numel_of(h, bound[h->i_other]);
        bad = !o || as_i64(o, &other);
        Py_XDECREF(o);
    } else {
        other = n;
    }
    if (!bad)
        bad = !(slot->dtype = plain_tensor(h, tensor)
            ? Py_TYPE(h->dtype_get)->tp_descr_get(h->dtype_get, tensor, h->tensor_type)
            : PyObject_GetAttr(tensor, s_dtype));
    if (bad) { PyErr_Clear(); return -1; }
    slot->n = n;
    slot->in = h->other_is_out ? n : other;
    slot->out = h->other_is_out ? other : n;
    return 0;
}

/* Same phase name and path: only the step differs (a decode loop makes a new PhaseFrame, a
 * NamedTuple (name, path, step), per step). */
static int same_phase_but_step(PyObject *a, PyObject *b) {
    if (a == b) return 1;
    if (!a || a == Py_None || b == Py_None || Py_TYPE(a) != Py_TYPE(b) || !PyTuple_Check(a) ||
        PyTuple_GET_SIZE(a) != 3 || PyTuple_GET_SIZE(b) != 3)
        return 0;
    for (int i = 0; i < 2; i++) {
        PyObject *x = PyTuple_GET_ITEM(a, i), *y = PyTuple_GET_ITEM(b, i);
        if (x != y && !(PyUnicode_CheckExact(x) && PyUnicode_CheckExact(y) &&
                        PyUnicode_Compare(x, y) == 0))
            return 0;
    }
    return 1;
}

/* The key code and step of a call (see make_wrapper's `last`): from the last call's key when
 * the dtype, group and phase name/path are the same, else from `key_code`. 1 when known, 0 when
 * a value is not an int64 (the call becomes a raw row), -1 on error. */
static int key_of(Hook *h, const BusySlot *s, int64_t *code, int64_t *step) {
    if (h->last_dt == s->dtype && h->last_gi == s->gi && same_phase_but_step(h->last_ph, s->ph)) {
        *code = h->last_code;
        if (h->last_ph == s->ph) {
            *step = h->last_step;
            return 1;
        }
        PyObject *st = PyTuple_GET_ITEM(s->ph, 2);
        if (st == Py_None) *step = NO_STEP;
        else if (as_i64(st, step) < 0) return 0;
    } else {
        PyObject *k = PyObject_CallFunctionObjArgs(h->key_code, h->api_idx, s->dtype, s->gi,
                                                   s->ph, NULL);
        if (!k) return -1;
        int ok = PyTuple_Check(k) && PyTuple_GET_SIZE(k) == 2 &&
                 as_i64(PyTuple_GET_ITEM(k, 0), code) == 0 &&
                 as_i64(PyTuple_GET_ITEM(k, 1), step) == 0;
        Py_DECREF(k);
        if (!ok) return 0;
    }
    /* Replace the whole cache before releasing the old values: a release can run code (and
     * let another thread in), which must never see half a cache. */
    PyObject *old_dt = h->last_dt, *old_gi = h->last_gi, *old_ph = h->last_ph;
    h->last_dt = Py_NewRef(s->dtype);
    h->last_gi = Py_NewRef(s->gi);
    h->last_ph = Py_NewRef(s->ph);
    h->last_code = *code;
    h->last_step = *step;
    Py_XDECREF(old_dt); Py_XDECREF(old_gi); Py_XDECREF(old_ph);
    return 1;
}

static PyObject *hook_vectorcall(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Busy *busy = (Busy *)h->busy;
    unsigned long tid = PyThread_get_thread_ident();
    if (busy_find(busy, tid) >= 0 || PyList_GET_SIZE(h->sessions) == 0)
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    PyObject *cuda = PyDict_GetItemWithError(h->rec_dict, s_cuda_timing); /* borrowed */
    int timed = cuda ? PyObject_IsTrue(cuda) : -1;
    if (timed != 0) { if (timed < 0) PyErr_Clear(); goto slow; }
    BusySlot slot = {.tid = tid, .api_idx = h->api_idx};
    slot.t0 = now_ns();

    PyObject *bound[MAXP] = {NULL};
    if (bind(h, args, nargs, kwnames, bound) < 0 || tid > (unsigned long)INT64_MAX) goto slow;
    int is_async = PyObject_IsTrue(
        h->i_async >= 0 && bound[h->i_async] ? bound[h->i_async] : Py_False);
    if (is_async != 0) { PyErr_Clear(); goto slow; }
    PyObject *group = bound[h->i_group] ? bound[h->i_group] : Py_None;
    PyObject *gi = PyDict_GetItemWithError(h->names, group); /* borrowed */
    PyObject *ctr = (gi && PyTuple_Check(gi) && PyTuple_GET_SIZE(gi) > 0)
        ? PyDict_GetItemWithError(h->counters, PyTuple_GET_ITEM(gi, 0)) : NULL;
    PyObject *seq_it = ctr ? PyDict_GetItemWithError(h->rec_dict, s_seq) : NULL;
    /* A group's first call (or an unhashable group), or sizes that are not int64: Python. */
    if (!seq_it || sizes(h, bound, &slot) < 0) { PyErr_Clear(); goto slow; }
    slot.gi = Py_NewRef(gi);
    if (PyContextVar_Get(h->phase_var, Py_None, &slot.ph) < 0 ||
        take_next(ctr, &slot.pg_seq) < 0 || take_next(seq_it, &slot.seq) < 0) {
        Py_CLEAR(slot.ph);
        goto unrecorded;
    }
    /* The busy slot holds references of its own; the hook keeps these for after the call. */
    BusySlot entry = slot;
    Py_INCREF(entry.api_idx); Py_INCREF(entry.dtype); Py_INCREF(entry.gi); Py_INCREF(entry.ph);
    if (busy_push(busy, &entry) < 0) {
        Py_DECREF(entry.api_idx); Py_DECREF(entry.dtype); Py_DECREF(entry.gi);
        Py_DECREF(entry.ph);
        goto unrecorded;
    }

    PyObject *res = PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    int64_t t1 = now_ns();
    Py_ssize_t at = busy_find(busy, tid); /* other threads may have moved it meanwhile */
    if (!res) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        if (at >= 0) busy_remove(busy, at);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb) PyException_SetTraceback(ev, tb);
        PyObject *r = call_back(h->fail, &slot, ev);
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
    if (at >= 0) busy_remove(busy, at);

    int64_t code, step;
    int known = key_of(h, &slot, &code, &step);
    if (known < 0) { Py_CLEAR(res); goto done; }
    if (!known) { /* a step beyond int64: an ordinary row instead (as the Python path) */
        PyObject *t1_obj = PyLong_FromLongLong(t1);
        PyObject *r = call_back(h->raw, &slot, t1_obj);
        Py_XDECREF(t1_obj);
        if (!r) Py_CLEAR(res);
        Py_XDECREF(r);
        goto done;
    }
    int64_t recd[NFIELDS] = {slot.t0, t1, slot.n, slot.in, slot.out, slot.pg_seq, slot.seq,
                             (int64_t)tid, step, code};
    if (append_all(h, recd) < 0) Py_CLEAR(res);
done:
    Py_DECREF(slot.dtype); Py_DECREF(slot.gi); Py_DECREF(slot.ph);
    return res;

unrecorded:
    /* As the Python wrapper: a failure to record never stops the collective (the other ranks
     * wait for it); only KeyboardInterrupt and the like propagate. */
    Py_XDECREF(slot.dtype); Py_XDECREF(slot.gi);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
    PyErr_Clear();
    return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);

slow:
    return PyObject_Vectorcall(h->slow, args, nargsf, kwnames);
}

static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"orig", "slow", "rec", "api_idx", "params", "count", "other",
                             "other_is_out", "group", "async_op", "key_code", "phase_var",
                             "fail", "raw", "tensor", NULL};
    PyObject *orig, *slow, *rec, *api_idx, *params, *key_code, *phase_var, *fail, *raw;
    PyObject *tensor = Py_None;
    int i_count, i_other, other_is_out, i_group, i_async;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOO!iipiiOOOO|$O", kwlist, &orig, &slow, &rec,
                                     &api_idx, &PyTuple_Type, &params, &i_count, &i_other,
                                     &other_is_out, &i_group, &i_async, &key_code, &phase_var,
                                     &fail, &raw, &tensor))
        return NULL;
    PyObject *tensor_type = NULL, *dtype_get = NULL, *numel_meth = NULL;
    if (tensor != Py_None) { /* (torch.Tensor, TensorBase.dtype, TensorBase.numel) */
        if (!PyArg_ParseTuple(tensor, "O!OO;Hook: tensor=(type, dtype getter, numel method)",
                              &PyType_Type, &tensor_type, &dtype_get, &numel_meth))
            return NULL;
        if (!Py_TYPE(dtype_get)->tp_descr_get) {
            PyErr_SetString(PyExc_TypeError, "Hook: the dtype getter is not a descriptor");
            return NULL;
        }
    }
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
    if (!rec_dict || !PyDict_Check(rec_dict) || !Py_IS_TYPE(busy, &BusyType) ||
        !PyList_Check(sessions) ||
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
    if (tensor_type) { /* a lookup gives the type a valid version tag (0 is never one) */
        PyObject *probe = PyObject_GetAttr(tensor_type, s_dtype);
        if (!probe) { Py_DECREF(h); return NULL; }
        Py_DECREF(probe);
        h->tensor_tag = ((PyTypeObject *)tensor_type)->tp_version_tag;
        if (h->tensor_tag) {
            h->tensor_type = Py_NewRef(tensor_type);
            h->dtype_get = Py_NewRef(dtype_get);
            h->numel_meth = Py_NewRef(numel_meth);
        }
    }
    h->nparams = (int)np; h->i_count = i_count; h->i_other = i_other;
    h->other_is_out = other_is_out; h->i_group = i_group; h->i_async = i_async;
    return (PyObject *)h;
}

/* Every object field, once: traverse and clear expand the same list. */
#define HOOK_OBJECTS(X) X(dict) X(orig) X(slow) X(busy) X(sessions) X(counters) X(names) \
    X(key_code) X(phase_var) X(fail) X(raw) X(api_idx) X(params) X(last_dt) X(last_gi) X(last_ph) \
    X(cached_session) X(cached_ints) X(rec_dict) X(tensor_type) X(dtype_get) X(numel_meth)

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
    INTERN(s_flush_at, "flush_at"); INTERN(s_flush, "flush"); INTERN(s_frombytes, "frombytes");
    INTERN(s_blocking, "blocking");
#undef INTERN
    if (PyType_Ready(&RecordsType) < 0 || PyType_Ready(&BusyType) < 0 ||
        PyType_Ready(&CounterType) < 0 || PyType_Ready(&HookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&mod);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Records", (PyObject *)&RecordsType) < 0 ||
        PyModule_AddObjectRef(m, "Busy", (PyObject *)&BusyType) < 0 ||
        PyModule_AddObjectRef(m, "Counter", (PyObject *)&CounterType) < 0 ||
        PyModule_AddObjectRef(m, "Hook", (PyObject *)&HookType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
