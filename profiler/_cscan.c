#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The NCCL log block scanner kernel (placeholder: the numpy scanner runs). */
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_cscan", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__cscan(void) { return PyModule_Create(&mod); }
