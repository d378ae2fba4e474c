/* Shared by the compiled hook's translation units (_chook.c, _chook_records.c). */
#ifndef COMMSCOPE_CHOOK_H
#define COMMSCOPE_CHOOK_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#define NFIELDS 10 /* _columns.FIELDS */

typedef struct {
    PyObject_HEAD
    int64_t *data;
    Py_ssize_t n;   /* int64 values held */
    Py_ssize_t cap;
} Records;

extern PyTypeObject RecordsType;

/* Room for `extra` more values (sets MemoryError and returns -1 if there is none). */
int records_reserve(Records *r, Py_ssize_t extra);

static inline int64_t now_ns(void) {
    /* time.time_ns() reads the same clock. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* `o` as an int64, as struct.pack("q") takes it (ints and objects with __index__); -1 if it
 * is not one (no exception left set). */
static inline int as_i64(PyObject *o, int64_t *out) {
    PyObject *i = PyLong_Check(o) ? Py_NewRef(o) : PyNumber_Index(o);
    if (!i) { PyErr_Clear(); return -1; }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (overflow || (v == -1 && PyErr_Occurred())) { PyErr_Clear(); return -1; }
    *out = v;
    return 0;
}

#endif
