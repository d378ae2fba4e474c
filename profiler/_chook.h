/* Shared by the compiled hook's translation units (_chook.c, _chook_call.c, _chook_records.c,
 * _chook_state.c). */
#ifndef COMMSCOPE_CHOOK_H
#define COMMSCOPE_CHOOK_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#define NFIELDS 10 /* _columns.FIELDS */

/* Layout of the hot path. Between two collectives a model runs enough code to evict the hook's
 * instructions from the L1 cache, so a call's cost is mostly the cache lines it touches: every
 * branch the ordinary call never takes (errors, a group's first call, a new key, Python
 * fallbacks) lives in a cold function out of line, and the common path stays dense. */
#if defined(__GNUC__)
#define COLD __attribute__((cold, noinline))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define COLD
#define UNLIKELY(x) (x)
#endif
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

#define MAXP 8 /* parameters of the hooked signatures */

/* A hooked collective (see _chook.c). */
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
    /* The last group (None itself, else a weak reference to it) and its info and pg_seq
     * counter, valid while the registry's `epoch` Counter (advanced by every clear) reads
     * `group_epoch`: two dict lookups saved per call (see is_last_group). */
    PyObject *epoch, *last_group, *last_group_gi, *last_group_ctr;
    int64_t group_epoch;
    /* The recorder, whose `cuda_timing` and `seq` slots (Recorder.__slots__) are read at these
     * offsets on every call: a pointer read instead of a dict lookup. */
    PyObject *rec;
    Py_ssize_t off_cuda_timing, off_seq;
    /* torch.Tensor, TensorBase's dtype getter and numel method (or NULL): called directly on an
     * exact Tensor while the type is unmodified (its version tag is still `tensor_tag`), or,
     * with `tensor_info` (_ctensor.cpp, built for this torch; it declines while a torch-function
     * mode is active, so a mode is honoured as in Python), not called at all. Sizes are
     * the type's, as `type(t).numel(t)` gives them: an instance attribute does not count. */
    PyObject *tensor_type, *dtype_get, *numel_meth;
    unsigned int tensor_tag;
    int (*tensor_info)(PyObject *, int64_t *, PyObject **);
} Hook;

/* Interned attribute names (set at module init). */
extern PyObject *s_numel, *s_dtype, *s_cuda_timing, *s_seq, *s_cols, *s_ints, *s_flush_at,
    *s_flush, *s_frombytes, *s_blocking;

/* _chook_call.c: what the call is. Bind the arguments to the hooked API's parameters (0, or -1
 * for anything unusual); the element counts as int64 and the dtype (-1: let Python handle it,
 * no exception set); the key code and step (1 known, 0 not an int64, -1 error). */
int hook_bind(Hook *h, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              PyObject **bound);
int hook_sizes(Hook *h, PyObject **bound, BusySlot *slot);
int hook_key(Hook *h, const BusySlot *s, int64_t *code, int64_t *step);

/* _chook_records.c: append one record to every recording session's buffer and flush those
 * over their threshold (0, or -1 with an exception set). */
int hook_append_all(Hook *h, const int64_t *recd);

/* Room for `extra` more values (sets MemoryError and returns -1 if there is none); the growth
 * is out of line. */
int records_grow(Records *r, Py_ssize_t extra);
static inline int records_reserve(Records *r, Py_ssize_t extra) {
    return r->n + extra <= r->cap ? 0 : records_grow(r, extra);
}

/* Index of `tid`'s slot, or -1. */
Py_ssize_t busy_find(const Busy *b, unsigned long tid);
/* Set the slot of `slot->tid` (taking over its references): replaces the thread's entry if it
 * has one (as `busy[tid] = value` does), else appends; -1 and MemoryError if there is no room. */
int busy_set(Busy *b, const BusySlot *slot);
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

/* Replace the `n` (<= 4) cache fields whole with `values` (references taken over), then release
 * the old values: a release can run code (and let another thread in), which must never see half
 * a cache. */
static inline void cache_replace(PyObject **const fields[], PyObject *const values[], int n) {
    PyObject *old[4];
    for (int i = 0; i < n; i++) {
        old[i] = *fields[i];
        *fields[i] = values[i];
    }
    for (int i = 0; i < n; i++) Py_XDECREF(old[i]);
}

/* Clear a pending ordinary error (an Exception); KeyboardInterrupt, SystemExit and the like
 * stay set, to propagate as they do through the Python wrapper. */
static inline void clear_ordinary(void) {
    if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
}

/* `o` as an int64, as struct.pack("q") takes it (ints and objects with __index__); -1 if it
 * is not one (no ordinary exception left set; see clear_ordinary). */
static inline int as_i64(PyObject *o, int64_t *out) {
    PyObject *i = PyLong_Check(o) ? Py_NewRef(o) : PyNumber_Index(o);
    if (!i) { clear_ordinary(); return -1; }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (overflow || (v == -1 && PyErr_Occurred())) { clear_ordinary(); return -1; }
    *out = v;
    return 0;
}

#endif
