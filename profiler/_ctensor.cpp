// The element count and scalar type of a torch.Tensor, read from its C++ TensorImpl for the
// compiled hook (_chook_call.c). Through Python, numel() and dtype run torch's argument parser
// and torch-function checks: about half of the hook's instructions and, in situ, half of its
// cache misses per call. Built against the installed torch by _build_ctensor.py (torch's headers
// are needed, so pip's isolated build cannot); loaded only by the torch it was built for.
#include <Python.h>

#include <torch/csrc/autograd/python_variable.h>

namespace {

// 0 and the two values; -1 when the tensor cannot say without Python (symbolic sizes throw).
// The caller has checked that `obj` is exactly a torch.Tensor.
int tensor_info(PyObject *obj, int64_t *numel, int *scalar_type) noexcept {
    try {
        const at::Tensor &t = THPVariable_Unpack(obj);
        *numel = t.numel();
        *scalar_type = static_cast<int>(t.scalar_type());
        return 0;
    } catch (...) {
        return -1;
    }
}

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctensor",
                      "The element count and scalar type of a tensor, for the compiled hook.",
                      -1, nullptr};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__ctensor(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return nullptr;
    PyObject *cap = PyCapsule_New(reinterpret_cast<void *>(&tensor_info),
                                  "commscope.profiler._ctensor.tensor_info", nullptr);
    if (!cap || PyModule_AddObject(m, "tensor_info", cap) < 0) {  // steals only on success
        Py_XDECREF(cap);
        Py_DECREF(m);
        return nullptr;
    }
    if (PyModule_AddStringConstant(m, "TORCH_VERSION", COMMSCOPE_TORCH_VERSION) < 0) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
