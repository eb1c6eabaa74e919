// Binds the kernels to the schemas that lsvit_kernels/ops.py declares (lsvit::native_patch_embed_forward /
// _backward). No schema is defined here: Python owns it, so the package works without this library, and this
// library, loaded afterwards, only adds implementations (TORCH_LIBRARY_IMPL).
//
// The library is also a Python extension module (lsvit_kernels._C) so that `import` finds and loads it; the
// module carries one attribute, `with_cuda`, saying whether the CUDA kernels were compiled in.
#include <Python.h>
#include <torch/library.h>

#include "common.h"

namespace lsvit {

TORCH_LIBRARY_IMPL(lsvit, CPU, m) {
  m.impl("native_patch_embed_forward", &cpu::forward);
  m.impl("native_patch_embed_backward", &cpu::backward);
}

#ifdef LSVIT_WITH_CUDA
TORCH_LIBRARY_IMPL(lsvit, CUDA, m) {
  m.impl("native_patch_embed_forward", &cuda::forward);
  m.impl("native_patch_embed_backward", &cuda::backward);
}
#endif

}  // namespace lsvit

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lsvit compiled kernels (registered with torch)", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef LSVIT_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  return module;
}
