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
 * `Records` and appending to it are in _chook_records.c, `Busy` and `Counter` in _chook_state.c,
 * reading the call's arguments in _chook_call.c.
 */
#include "_chook.h"
#include <pythread.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY: the recorder's slots */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------- Hook */

PyObject *s_numel, *s_dtype, *s_cuda_timing, *s_seq, *s_cols, *s_ints, *s_flush_at,
    *s_flush, *s_frombytes, *s_blocking;

/* take_next for a counter that is not a Counter: through next(). */
COLD static int take_next_other(PyObject *it, int64_t *out) {
    if (!PyIter_Check(it)) {
        PyErr_Format(PyExc_TypeError, "commscope: counter %R is not an iterator", it);
        return -1;
    }
    PyObject *v = PyIter_Next(it);
    if (!v) return -1;
    int r = as_i64(v, out);
    Py_DECREF(v);
    return r;
}

/* The next value of a pg_seq/seq counter as an int64: a Counter's unboxed, anything else's
 * through next(). -1 when there is none (an exception may be set). */
static inline int take_next(PyObject *it, int64_t *out) {
    if (UNLIKELY(!Py_IS_TYPE(it, &CounterType))) return take_next_other(it, out);
    Counter *c = (Counter *)it;
    if (UNLIKELY(c->next == INT64_MAX)) return -1;
    *out = c->next++;
    return 0;
}

/* Call `fn(entry, tid, extra)` for a call the C path cannot record itself (see make_wrapper's
 * `fail` and `raw`); a new reference to its result, or NULL. */
COLD static PyObject *call_back(PyObject *fn, const BusySlot *slot, PyObject *extra) {
    PyObject *entry = entry_tuple(slot);
    PyObject *tid = entry ? PyLong_FromUnsignedLong(slot->tid) : NULL;
    PyObject *r = (tid && extra) ? PyObject_CallFunctionObjArgs(fn, entry, tid, extra, NULL) : NULL;
    Py_XDECREF(entry); Py_XDECREF(tid);
    return r;
}

/* The collective raised: record it as failed (make_wrapper's `fail`) and leave its error set,
 * or, if recording fails, that error chained to the call's. */
COLD static void call_failed(Hook *h, Busy *busy, Py_ssize_t at, const BusySlot *slot) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (at >= 0) busy_remove(busy, at);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb) PyException_SetTraceback(ev, tb);
    PyObject *r = call_back(h->fail, slot, ev);
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
}

/* A step beyond int64: an ordinary row instead (make_wrapper's `raw`, as the Python path);
 * 0, or -1 with an exception set. */
COLD static int record_raw(Hook *h, const BusySlot *slot, int64_t t1) {
    PyObject *t1_obj = PyLong_FromLongLong(t1);
    PyObject *r = t1_obj ? call_back(h->raw, slot, t1_obj) : NULL;
    Py_XDECREF(t1_obj);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Whether `group` is the hook's last group: None is held as itself, any other group by a weak
 * reference (a destroyed group is never kept alive by the hook; its death clears the reference,
 * so no later object at its address can match). */
static inline int is_last_group(Hook *h, PyObject *group) {
    PyObject *g = h->last_group;
    if (g == Py_None || !g) return g == group;
    return group != Py_None && PyWeakref_GET_OBJECT(g) == group;
}

/* The info and pg_seq counter of `group` from the registry (new references; NULL, and *gi_out
 * NULL, when either is not there yet or the group is unhashable: the Python path resolves it),
 * kept as the hook's last group when the group takes a weak reference. */
COLD static PyObject *lookup_group(Hook *h, PyObject *group, PyObject **gi_out) {
    int64_t epoch = ((Counter *)h->epoch)->next; /* before the lookups: a clear may run code */
    *gi_out = NULL;
    PyObject *gi = PyDict_GetItemWithError(h->names, group);
    PyObject *ctr = (gi && PyTuple_Check(gi) && PyTuple_GET_SIZE(gi) > 0)
        ? PyDict_GetItemWithError(h->counters, PyTuple_GET_ITEM(gi, 0)) : NULL;
    if (!ctr) return NULL;
    Py_INCREF(gi); Py_INCREF(ctr); /* the caller's, before anything below can run code */
    PyObject *ref = group == Py_None ? Py_NewRef(Py_None) : PyWeakref_NewRef(group, NULL);
    if (ref) {
        h->group_epoch = epoch;
        cache_replace((PyObject **const[]){&h->last_group, &h->last_group_gi, &h->last_group_ctr},
                      (PyObject *const[]){ref, Py_NewRef(gi), Py_NewRef(ctr)}, 3);
    } else {
        PyErr_Clear(); /* a group without weak references: looked up every call */
    }
    *gi_out = gi;
    return ctr;
}

static PyObject *hook_vectorcall(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Busy *busy = (Busy *)h->busy;
    unsigned long tid = PyThread_get_thread_ident();
    if (busy_find(busy, tid) >= 0 || PyList_GET_SIZE(h->sessions) == 0)
        return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    PyObject *cuda = *(PyObject **)((char *)h->rec + h->off_cuda_timing); /* borrowed */
    int timed = cuda == Py_False ? 0 : cuda ? PyObject_IsTrue(cuda) : -1;
    if (UNLIKELY(timed != 0)) { if (timed < 0) PyErr_Clear(); goto slow; }
    BusySlot slot = {.tid = tid, .api_idx = h->api_idx};
    slot.t0 = now_ns();

    PyObject *bound[MAXP] = {NULL};
    if (UNLIKELY(hook_bind(h, args, nargs, kwnames, bound) < 0 || tid > (unsigned long)INT64_MAX))
        goto slow;
    PyObject *async_op = h->i_async >= 0 && bound[h->i_async] ? bound[h->i_async] : Py_False;
    int is_async = async_op == Py_False ? 0 : PyObject_IsTrue(async_op);
    if (UNLIKELY(is_async != 0)) { clear_ordinary(); goto slow; }
    /* Sizes that are not int64: Python. First, as numel() and dtype can run Python code (a
     * tensor subclass) that may change the group registry read below. */
    if (UNLIKELY(hook_sizes(h, bound, &slot) < 0)) goto slow;
    PyObject *group = bound[h->i_group] ? bound[h->i_group] : Py_None;
    PyObject *gi, *ctr; /* new references */
    if (is_last_group(h, group) && ((Counter *)h->epoch)->next == h->group_epoch) {
        gi = Py_NewRef(h->last_group_gi);
        ctr = Py_NewRef(h->last_group_ctr);
    } else {
        ctr = lookup_group(h, group, &gi);
    }
    PyObject *seq_it = ctr ? *(PyObject **)((char *)h->rec + h->off_seq) : NULL;
    if (UNLIKELY(!seq_it)) { /* a group's first call (or an unhashable group): Python resolves it */
        clear_ordinary();
        Py_XDECREF(gi); Py_XDECREF(ctr);
        Py_DECREF(slot.dtype);
        goto slow;
    }
    slot.gi = gi;
    Py_INCREF(seq_it); /* next() of an iterator that is not a Counter runs code */
    int taken = PyContextVar_Get(h->phase_var, Py_None, &slot.ph) == 0 &&
                take_next(ctr, &slot.pg_seq) == 0 && take_next(seq_it, &slot.seq) == 0;
    Py_DECREF(ctr); Py_DECREF(seq_it);
    if (UNLIKELY(!taken)) goto unrecorded;
    /* The busy slot holds references of its own; the hook keeps these for after the call. */
    BusySlot entry = slot;
    Py_INCREF(entry.api_idx); Py_INCREF(entry.dtype); Py_INCREF(entry.gi); Py_INCREF(entry.ph);
    if (UNLIKELY(busy_set(busy, &entry) < 0)) {
        Py_DECREF(entry.api_idx); Py_DECREF(entry.dtype); Py_DECREF(entry.gi);
        Py_DECREF(entry.ph);
        goto unrecorded;
    }

    PyObject *res = PyObject_Vectorcall(h->orig, args, nargsf, kwnames);
    int64_t t1 = now_ns();
    Py_ssize_t at = busy_find(busy, tid); /* other threads may have moved it meanwhile */
    if (UNLIKELY(!res)) {
        call_failed(h, busy, at, &slot);
        goto done;
    }
    if (at >= 0) busy_remove(busy, at);

    int64_t code, step;
    int known = hook_key(h, &slot, &code, &step);
    if (UNLIKELY(known <= 0)) {
        if (known < 0 || record_raw(h, &slot, t1) < 0) Py_CLEAR(res);
        goto done;
    }
    int64_t recd[NFIELDS] = {slot.t0, t1, slot.n, slot.in, slot.out, slot.pg_seq, slot.seq,
                             (int64_t)tid, step, code};
    if (UNLIKELY(hook_append_all(h, recd) < 0)) Py_CLEAR(res);
done:
    Py_DECREF(slot.dtype); Py_DECREF(slot.gi); Py_DECREF(slot.ph);
    return res;

unrecorded:
    /* As the Python wrapper: a failure to record never stops the collective (the other ranks
     * wait for it); only KeyboardInterrupt and the like propagate. */
    Py_XDECREF(slot.dtype); Py_XDECREF(slot.gi); Py_XDECREF(slot.ph);
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
    PyErr_Clear();
    return PyObject_Vectorcall(h->orig, args, nargsf, kwnames);

slow:
    if (PyErr_Occurred()) return NULL; /* only a KeyboardInterrupt and the like is left set */
    return PyObject_Vectorcall(h->slow, args, nargsf, kwnames);
}

/* Offset of the object slot `name` of rec's type (a `__slots__` member), or -1 with an error. */
static Py_ssize_t slot_offset(PyObject *rec, PyObject *name) {
    PyObject *d = PyObject_GetAttr((PyObject *)Py_TYPE(rec), name); /* the member descriptor */
    Py_ssize_t off = -1;
    if (d && Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) off = m->offset;
    }
    Py_XDECREF(d);
    if (off < 0 && !PyErr_Occurred())
        PyErr_Format(PyExc_TypeError, "Hook: the recorder has no object slot %R", name);
    return off;
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
    PyObject *tensor_type = NULL, *dtype_get = NULL, *numel_meth = NULL, *info = Py_None;
    void *tensor_info = NULL;
    if (tensor != Py_None) { /* (torch.Tensor, TensorBase.dtype, TensorBase.numel, capsule) */
        if (!PyArg_ParseTuple(tensor, "O!OOO;Hook: tensor=(type, dtype getter, numel, info)",
                              &PyType_Type, &tensor_type, &dtype_get, &numel_meth, &info))
            return NULL;
        if (!Py_TYPE(dtype_get)->tp_descr_get || !PyCallable_Check(numel_meth)) {
            PyErr_SetString(PyExc_TypeError, "Hook: bad dtype getter or numel method");
            return NULL;
        }
        if (info != Py_None &&
            !(tensor_info = PyCapsule_GetPointer(info, "commscope.profiler._ctensor.tensor_info_v2")))
            return NULL;
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
    PyObject *epoch = names ? PyObject_GetAttrString(groups, "epoch") : NULL;
    Py_ssize_t off_cuda_timing = epoch ? slot_offset(rec, s_cuda_timing) : -1;
    Py_ssize_t off_seq = off_cuda_timing >= 0 ? slot_offset(rec, s_seq) : -1;
    Py_XDECREF(groups);
    if (off_seq < 0 || !Py_IS_TYPE(busy, &BusyType) || !PyList_Check(sessions) ||
        !PyDict_Check(counters) || !PyDict_Check(names) || !Py_IS_TYPE(epoch, &CounterType) ||
        !PyContextVar_CheckExact(phase_var)) {
        Py_XDECREF(busy); Py_XDECREF(sessions); Py_XDECREF(counters); Py_XDECREF(names);
        Py_XDECREF(epoch);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Hook: unexpected recorder");
        return NULL;
    }
    Hook *h = (Hook *)type->tp_alloc(type, 0);
    if (!h) {
        Py_DECREF(busy); Py_DECREF(sessions); Py_DECREF(counters); Py_DECREF(names);
        Py_DECREF(epoch);
        return NULL;
    }
    h->vectorcall = (vectorcallfunc)hook_vectorcall;
    h->orig = Py_NewRef(orig); h->slow = Py_NewRef(slow);
    h->busy = busy; h->sessions = sessions; h->counters = counters; h->names = names;
    h->epoch = epoch;
    h->rec = Py_NewRef(rec);
    h->off_cuda_timing = off_cuda_timing; h->off_seq = off_seq;
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
            h->tensor_info = (int (*)(PyObject *, int64_t *, PyObject **))tensor_info;
        }
    }
    h->nparams = (int)np; h->i_count = i_count; h->i_other = i_other;
    h->other_is_out = other_is_out; h->i_group = i_group; h->i_async = i_async;
    return (PyObject *)h;
}

/* Every object field, once: traverse and clear expand the same list. */
#define HOOK_OBJECTS(X) X(dict) X(orig) X(slow) X(busy) X(sessions) X(counters) X(names) \
    X(key_code) X(phase_var) X(fail) X(raw) X(api_idx) X(params) X(last_dt) X(last_gi) X(last_ph) \
    X(cached_session) X(cached_ints) X(rec) X(tensor_type) X(dtype_get) X(numel_meth) X(epoch) \
    X(last_group) X(last_group_gi) X(last_group_ctr)

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
