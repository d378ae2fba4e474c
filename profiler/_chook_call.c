/* What a hooked call is, for the compiled hook (_chook.c): its arguments bound to the API's
 * parameters, its element counts and dtype, and the key code and step of its packed record. */
#include "_chook.h"

/* Binds by the extractor's parameter names (see _chook.h). */
int hook_bind(Hook *h, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
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
        if (found < 0 || bound[found]) { clear_ordinary(); return -1; }
        bound[found] = args[nargs + j];
    }
    return 0;
}

static inline int plain_tensor(Hook *h, PyObject *t) {
    return h->tensor_type && Py_TYPE(t) == (PyTypeObject *)h->tensor_type &&
           ((PyTypeObject *)h->tensor_type)->tp_version_tag == h->tensor_tag;
}

/* count_of without the TensorImpl reader: TensorBase's numel method, or the type's. */
COLD static int count_by_python(Hook *h, PyObject *t, int plain, int64_t *n) {
    PyObject *o;
    if (plain) {
        o = PyObject_Vectorcall(h->numel_meth, &t, 1, NULL);
    } else {
        PyObject *m = PyObject_GetAttr((PyObject *)Py_TYPE(t), s_numel);
        o = m ? PyObject_CallOneArg(m, t) : NULL;
        Py_XDECREF(m);
    }
    int bad = !o || as_i64(o, n);
    Py_XDECREF(o);
    if (bad) clear_ordinary();
    return bad ? -1 : 0;
}

/* The element count of `t`, as `type(t).numel(t)`, and, when read from the TensorImpl, its dtype
 * (borrowed; else NULL); -1 for anything the Python path should handle (no ordinary error set). */
static inline int count_of(Hook *h, PyObject *t, int plain, int64_t *n, PyObject **dtype) {
    *dtype = NULL;
    if (plain && h->tensor_info && h->tensor_info(t, n, dtype) == 0) return 0;
    *dtype = NULL;
    return count_by_python(h, t, plain, n);
}

/* The dtype of a tensor the TensorImpl reader did not read (new reference; NULL, no ordinary
 * error set, if it has none). */
COLD static PyObject *dtype_by_python(Hook *h, PyObject *tensor, int plain) {
    PyObject *dt = plain
        ? Py_TYPE(h->dtype_get)->tp_descr_get(h->dtype_get, tensor, h->tensor_type)
        : PyObject_GetAttr(tensor, s_dtype);
    if (!dt) clear_ordinary();
    return dt;
}

/* The element counts of the call's tensor(s) as int64 and its dtype (new reference); -1 for
 * anything the Python path should handle (no exception left set). */
int hook_sizes(Hook *h, PyObject **bound, BusySlot *slot) {
    if (h->i_count < 0) { /* barrier: no tensor */
        slot->n = slot->in = slot->out = 0;
        slot->dtype = Py_NewRef(Py_None);
        return 0;
    }
    PyObject *tensor = bound[h->i_count];
    if (!tensor || (h->i_other >= 0 && !bound[h->i_other])) return -1;
    int64_t n, other;
    PyObject *dt, *unused;
    int plain = plain_tensor(h, tensor);
    if (UNLIKELY(count_of(h, tensor, plain, &n, &dt))) return -1;
    if (h->i_other >= 0) {
        PyObject *t2 = bound[h->i_other];
        if (UNLIKELY(count_of(h, t2, plain_tensor(h, t2), &other, &unused))) return -1;
    } else {
        other = n;
    }
    slot->dtype = dt ? Py_NewRef(dt) : dtype_by_python(h, tensor, plain);
    if (UNLIKELY(!slot->dtype)) return -1;
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

/* hook_key for a call whose key is not the last call's: `key_code` interns it. */
COLD static int key_by_python(Hook *h, const BusySlot *s, int64_t *code, int64_t *step) {
    PyObject *k = PyObject_CallFunctionObjArgs(h->key_code, h->api_idx, s->dtype, s->gi, s->ph,
                                               NULL);
    if (!k) return -1;
    int ok = PyTuple_Check(k) && PyTuple_GET_SIZE(k) == 2 &&
             as_i64(PyTuple_GET_ITEM(k, 0), code) == 0 &&
             as_i64(PyTuple_GET_ITEM(k, 1), step) == 0;
    Py_DECREF(k);
    return ok ? 1 : PyErr_Occurred() ? -1 : 0;
}

/* The key code and step of a call (see make_wrapper's `last`): from the last call's key when
 * the dtype, group and phase name/path are the same, else from `key_code`. 1 when known, 0 when
 * a value is not an int64 (the call becomes a raw row), -1 on error. */
int hook_key(Hook *h, const BusySlot *s, int64_t *code, int64_t *step) {
    if (h->last_dt == s->dtype && h->last_gi == s->gi && same_phase_but_step(h->last_ph, s->ph)) {
        *code = h->last_code;
        if (h->last_ph == s->ph) {
            *step = h->last_step;
            return 1;
        }
        PyObject *st = PyTuple_GET_ITEM(s->ph, 2);
        if (st == Py_None) *step = NO_STEP;
        else if (as_i64(st, step) < 0) return PyErr_Occurred() ? -1 : 0;
    } else {
        int known = key_by_python(h, s, code, step);
        if (known <= 0) return known;
    }
    h->last_code = *code;
    h->last_step = *step;
    cache_replace((PyObject **const[]){&h->last_dt, &h->last_gi, &h->last_ph},
                  (PyObject *const[]){Py_NewRef(s->dtype), Py_NewRef(s->gi), Py_NewRef(s->ph)}, 3);
    return 1;
}
