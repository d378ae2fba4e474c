/* Shared by the compiled hook's translation units (_chook.c, _chook_records.c, _chook_state.c). */
#ifndef COMMSCOPE_CHOOK_H
#define COMMSCOPE_CHOOK_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#define NFIELDS 10 /* _columns.FIELDS */
#define NO_STEP INT64_MIN /* _columns.NO_STEP: a call outside any phase with a step */

typedef struct {
    PyObject_HEAD
    int64_t *data;
    Py_ssize_t n;   /* int64 values held */
    Py_ssize_t cap;
    int64_t flush_at; /* the session flushes once n reaches this (clamped to int64) */
} Records;

/* One thread inside a recorded call. `value` is what Python stored (a row, an entry tuple,
 * True); NULL marks the compiled hook's entry, whose fields are kept here unboxed. */
typedef struct {
    unsigned long tid;
    PyObject *value;
    PyObject *api_idx, *dtype, *gi, *ph; /* owned (hook entries) */
    int64_t t0, n, in, out, pg_seq, seq;
} BusySlot;

/* The recorder's busy map: thread ident -> slot, a few threads, kept in insertion order. */
typedef struct {
    PyObject_HEAD
    BusySlot *slots;
    Py_ssize_t n, cap;
} Busy;

/* itertools.count() from 0 whose value the hook reads without boxing it. */
typedef struct {
    PyObject_HEAD
    int64_t next;
} Counter;

extern PyTypeObject RecordsType, BusyType, CounterType;

/* Room for `extra` more values (sets MemoryError and returns -1 if there is none). */
int records_reserve(Records *r, Py_ssize_t extra);

/* Index of `tid`'s slot, or -1. */
Py_ssize_t busy_find(const Busy *b, unsigned long tid);
/* Append a slot (taking over its references); -1 and MemoryError if there is no room. */
int busy_push(Busy *b, const BusySlot *slot);
/* Remove slot `i` and release what it held (after it is out of the table: a release can run
 * code that looks at the table). */
void busy_remove(Busy *b, Py_ssize_t i);
/* A hook entry as the Python wrapper's entry tuple:
 * (api index, t0, (dtype, count, in, out), group info, pg_seq, seq, phase). */
PyObject *entry_tuple(const BusySlot *s);

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
