// The element count and dtype of a torch.Tensor, read from its C++ TensorImpl for the
// compiled hook (_chook_call.c). Through Python, numel() and dtype run torch's argument parser
// and torch-function checks: about half of the hook's instructions and, in situ, half of its
// cache misses per call. Built against the installed torch by _build_ctensor.py (torch's headers
// are needed, so pip's isolated build cannot); loaded only by the torch it was built for.
#include <Python.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/autograd/python_variable.h>

namespace {

// 0, the count and torch's dtype object (borrowed: torch keeps one per scalar type); -1 when
// Python must answer: a torch-function mode is active (it may override numel or dtype, as the
// Python paths honour) or the tensor cannot say without Python (symbolic sizes throw).
// The caller has checked that `obj` is exactly a torch.Tensor.
int tensor_info(PyObject *obj, int64_t *numel, PyObject **dtype) noexcept {
    try {
        if (at::impl::torch_function_mode_enabled() ||
            at::impl::PythonTorchFunctionTLS::peek_skip_next())
            return -1;
        const at::Tensor &t = THPVariable_Unpack(obj);
        *numel = t.numel();
        *dtype = reinterpret_cast<PyObject *>(torch::getTHPDtype(t.scalar_type()));
        return 0;
    } catch (...) {
        return -1;
    }
}

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctensor",
                      "The element count and dtype of a tensor, for the compiled hook.",
                      -1, nullptr};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__ctensor(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return nullptr;
    PyObject *cap = PyCapsule_New(reinterpret_cast<void *>(&tensor_info),
                                  "commscope.profiler._ctensor.tensor_info_v2", nullptr);
    if (!cap || PyModule_AddObject(m, "tensor_info", cap) < 0) {  // steals only on success
        Py_XDECREF(cap);
        Py_DECREF(m);
        return nullptr;
    }
    // ABI: the capsule's signature (the hook checks the capsule's name too); 1 returned the
    // scalar type instead of the dtype object.
    if (PyModule_AddStringConstant(m, "TORCH_VERSION", COMMSCOPE_TORCH_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
