/* Shared by the compiled hook's translation units (_chook.c, _chook_records.c). */
#ifndef COMMSCOPE_CHOOK_H
#define COMMSCOPE_CHOOK_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

#endif
