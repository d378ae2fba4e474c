/* The recorder's per-thread and counter state, shared by the compiled hook and the Python
 * wrappers (see _recorder.Recorder):
 *
 * `Busy` maps a thread ident to what that thread is inside of, as the dict it replaces does
 * (`tid in busy`, `busy[tid] = row`, `del busy[tid]`, `pop`, `items()`), so every Python wrapper
 * uses it unchanged. The compiled hook keeps its entry unboxed in the slot instead of building
 * an entry tuple and a dict item per call; `busy[tid]` and `items()` build that tuple only when
 * asked (a timed flush writing calls in flight as 'started').
 *
 * `Counter` is `itertools.count()` whose value the hook takes without making an int object.
 */
#include "_chook.h"
#include <string.h>

/* ---------------------------------------------------------------------------- Busy */

Py_ssize_t busy_find(const Busy *b, unsigned long tid) {
    for (Py_ssize_t i = 0; i < b->n; i++)
        if (b->slots[i].tid == tid) return i;
    return -1;
}

/* Take or drop a reference to every object a slot holds. */
static void slot_hold(BusySlot *s) {
    Py_XINCREF(s->value); Py_XINCREF(s->api_idx); Py_XINCREF(s->dtype);
    Py_XINCREF(s->gi); Py_XINCREF(s->ph);
}

static void slot_release(BusySlot *s) {
    Py_XDECREF(s->value); Py_XDECREF(s->api_idx); Py_XDECREF(s->dtype);
    Py_XDECREF(s->gi); Py_XDECREF(s->ph);
}

int busy_set(Busy *b, const BusySlot *slot) {
    Py_ssize_t i = busy_find(b, slot->tid);
    if (i >= 0) { /* replaced whole, then released (a release can run code) */
        BusySlot old = b->slots[i];
        b->slots[i] = *slot;
        slot_release(&old);
        return 0;
    }
    if (b->n == b->cap) {
        Py_ssize_t cap = b->cap ? 2 * b->cap : 8;
        BusySlot *p = PyMem_Realloc(b->slots, (size_t)cap * sizeof(BusySlot));
        if (!p) { PyErr_NoMemory(); return -1; }
        b->slots = p;
        b->cap = cap;
    }
    b->slots[b->n++] = *slot;
    return 0;
}

void busy_remove(Busy *b, Py_ssize_t i) {
    BusySlot gone = b->slots[i];
    if (UNLIKELY(i < b->n - 1)) /* usually the last slot: no libc call, no code to fetch */
        memmove(b->slots + i, b->slots + i + 1, (size_t)(b->n - i - 1) * sizeof(BusySlot));
    b->n--;
    slot_release(&gone);
}

PyObject *entry_tuple(const BusySlot *s) {
    PyObject *n = PyLong_FromLongLong(s->n), *in = PyLong_FromLongLong(s->in),
             *out = PyLong_FromLongLong(s->out), *t0 = PyLong_FromLongLong(s->t0),
             *pg_seq = PyLong_FromLongLong(s->pg_seq), *seq = PyLong_FromLongLong(s->seq);
    PyObject *info = (n && in && out) ? PyTuple_Pack(4, s->dtype, n, in, out) : NULL;
    PyObject *e = (info && t0 && pg_seq && seq)
        ? PyTuple_Pack(7, s->api_idx, t0, info, s->gi, pg_seq, seq, s->ph) : NULL;
    Py_XDECREF(n); Py_XDECREF(in); Py_XDECREF(out); Py_XDECREF(t0);
    Py_XDECREF(pg_seq); Py_XDECREF(seq); Py_XDECREF(info);
    return e;
}

/* What Python sees stored for a held slot (new reference): its value, or the hook's entry. */
static PyObject *slot_object(const BusySlot *s) {
    return s->value ? Py_NewRef(s->value) : entry_tuple(s);
}

/* The same for slot `i`. Building an entry tuple allocates, and a collection then can run code
 * that changes the map: the slot is copied and its objects held first, and callers look the
 * thread up again afterwards. */
static PyObject *slot_value(Busy *b, Py_ssize_t i) {
    BusySlot s = b->slots[i];
    slot_hold(&s);
    PyObject *o = slot_object(&s);
    slot_release(&s);
    return o;
}

/* A key as a thread ident: 0, or -1 (no exception set) for anything that cannot be one, which
 * is then absent, as from a dict. */
static int key_tid(PyObject *key, unsigned long *tid) {
    if (!PyLong_Check(key)) return -1;
    *tid = PyLong_AsUnsignedLong(key);
    if (*tid == (unsigned long)-1 && PyErr_Occurred()) { PyErr_Clear(); return -1; }
    return 0;
}

static int busy_contains(Busy *b, PyObject *key) {
    unsigned long tid;
    return key_tid(key, &tid) == 0 && busy_find(b, tid) >= 0;
}

static Py_ssize_t busy_len(Busy *b) { return b->n; }

static PyObject *busy_getitem(Busy *b, PyObject *key) {
    unsigned long tid;
    Py_ssize_t i = key_tid(key, &tid) == 0 ? busy_find(b, tid) : -1;
    if (i < 0) { PyErr_SetObject(PyExc_KeyError, key); return NULL; }
    return slot_value(b, i);
}

static int busy_setitem(Busy *b, PyObject *key, PyObject *value) {
    unsigned long tid;
    int ok = key_tid(key, &tid) == 0;
    if (!value) { /* del busy[tid] */
        Py_ssize_t i = ok ? busy_find(b, tid) : -1;
        if (i < 0) { PyErr_SetObject(PyExc_KeyError, key); return -1; }
        busy_remove(b, i);
        return 0;
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "Busy: keys are thread idents, not %R", key);
        return -1;
    }
    BusySlot fresh = {.tid = tid, .value = Py_NewRef(value)};
    if (busy_set(b, &fresh) < 0) { Py_DECREF(value); return -1; }
    return 0;
}

static PyObject *busy_pop(Busy *b, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "pop expected 1 or 2 arguments");
        return NULL;
    }
    unsigned long tid;
    Py_ssize_t i = key_tid(args[0], &tid) == 0 ? busy_find(b, tid) : -1;
    if (i < 0) {
        if (nargs == 2) return Py_NewRef(args[1]);
        PyErr_SetObject(PyExc_KeyError, args[0]);
        return NULL;
    }
    PyObject *v = slot_value(b, i);
    if (v && (i = busy_find(b, tid)) >= 0) busy_remove(b, i); /* the table may have moved */
    return v;
}

static PyObject *busy_items(Busy *b, PyObject *unused) {
    /* A held copy first: building the pairs allocates, which can run code that changes b. */
    Py_ssize_t n = b->n;
    BusySlot *copy = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(BusySlot));
    if (!copy) return PyErr_NoMemory();
    memcpy(copy, b->slots, (size_t)n * sizeof(BusySlot));
    for (Py_ssize_t i = 0; i < n; i++) slot_hold(&copy[i]);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *k = PyLong_FromUnsignedLong(copy[i].tid);
        PyObject *v = k ? slot_object(&copy[i]) : NULL;
        PyObject *pair = v ? PyTuple_Pack(2, k, v) : NULL;
        Py_XDECREF(k); Py_XDECREF(v);
        if (!pair || PyList_Append(out, pair) < 0) Py_CLEAR(out);
        Py_XDECREF(pair);
    }
    for (Py_ssize_t i = 0; i < n; i++) slot_release(&copy[i]);
    PyMem_Free(copy);
    return out;
}

static int busy_traverse(Busy *b, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < b->n; i++) {
        BusySlot *s = &b->slots[i];
        Py_VISIT(s->value); Py_VISIT(s->api_idx); Py_VISIT(s->dtype);
        Py_VISIT(s->gi); Py_VISIT(s->ph);
    }
    return 0;
}

static int busy_clear(Busy *b) {
    while (b->n) busy_remove(b, b->n - 1);
    return 0;
}

static void busy_dealloc(Busy *b) {
    PyObject_GC_UnTrack(b);
    busy_clear(b);
    PyMem_Free(b->slots);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyMethodDef busy_methods[] = {
    {"pop", (PyCFunction)(void (*)(void))busy_pop, METH_FASTCALL,
     "pop(tid[, default]): remove and return tid's value, as dict.pop."},
    {"items", (PyCFunction)busy_items, METH_NOARGS,
     "A list of (tid, value) in the order the threads entered."},
    {NULL}};

static PySequenceMethods busy_seq = {.sq_contains = (objobjproc)busy_contains};
static PyMappingMethods busy_map = {.mp_length = (lenfunc)busy_len,
                                    .mp_subscript = (binaryfunc)busy_getitem,
                                    .mp_ass_subscript = (objobjargproc)busy_setitem};

PyTypeObject BusyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "commscope.profiler._chook.Busy",
    .tp_basicsize = sizeof(Busy),
    .tp_dealloc = (destructor)busy_dealloc,
    .tp_as_sequence = &busy_seq,
    .tp_as_mapping = &busy_map,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Thread ident -> what the thread is inside of (the recorder's busy map).",
    .tp_traverse = (traverseproc)busy_traverse,
    .tp_clear = (inquiry)busy_clear,
    .tp_methods = busy_methods,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------------------- Counter */

static PyObject *counter_next(Counter *c) {
    if (c->next == INT64_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Counter: beyond int64");
        return NULL;
    }
    return PyLong_FromLongLong(c->next++);
}

static PyObject *counter_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Counter() takes no arguments (it counts from 0)");
        return NULL;
    }
    return PyType_GenericNew(type, args, kw);
}

static PyObject *counter_repr(Counter *c) {
    return PyUnicode_FromFormat("Counter(%lld)", (long long)c->next);
}

PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "commscope.profiler._chook.Counter",
    .tp_basicsize = sizeof(Counter),
    .tp_repr = (reprfunc)counter_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Counter(): 0, 1, 2, ... as itertools.count() (read unboxed by the hook).",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)counter_next,
    .tp_new = counter_new,
};
