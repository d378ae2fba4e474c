/* Declarations shared by the translation units of `commscope.profiler._cscan` (see _cscan.c
 * for what each kernel does): _cscan.c (the block scanner, the method table, module init),
 * _cscan_join.c (gather, take, strip_ansi, cumcount, merge_tail) and _cscan_walk.c
 * (tuning_walk). Include it first: it includes Python.h.
 */
#ifndef COMMSCOPE_CSCAN_H
#define COMMSCOPE_CSCAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h> /* defines _GNU_SOURCE on Linux: glibc's memrchr */
#include <stdint.h>
#include <string.h>

/* PyDoc_STRVAR without `static`: the docs of the other units' methods, for the method table. */
#define CSCAN_DOC(name, str) const char name[] = PyDoc_STR(str)

/* A writable buffer of n bytes from the caller's allocator (`alloc(n)`, e.g. Arrow's pool,
 * which reuses memory: fresh pages cost more than the scan here); NULL on error. */
static inline PyObject *alloc_buffer(PyObject *alloc, Py_ssize_t n, Py_buffer *view) {
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

/* _cscan_join.c */
extern const char cscan_gather_doc[], cscan_take_doc[], cscan_strip_doc[], cscan_cumcount_doc[],
    cscan_merge_doc[];
PyObject *cscan_gather(PyObject *self, PyObject *args);
PyObject *cscan_take(PyObject *self, PyObject *args);
PyObject *cscan_strip_ansi(PyObject *self, PyObject *arg);
PyObject *cscan_cumcount(PyObject *self, PyObject *args);
PyObject *cscan_merge_tail(PyObject *self, PyObject *args);

/* _cscan_walk.c */
extern const char cscan_walk_doc[];
PyObject *cscan_tuning_walk(PyObject *self, PyObject *args);

#endif /* COMMSCOPE_CSCAN_H */
