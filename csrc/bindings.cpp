// pyaeplus._C: the CPU kernels. Each op's file registers its own functions (registry.h).
#include <pybind11/pybind11.h>

#include "common.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
std::vector<std::pair<const char*, BindFn>>& registry() {
  static std::vector<std::pair<const char*, BindFn>> r;
  return r;
}
}  // namespace pyaeplus

#ifndef PYAEPLUS_COMPILER
#define PYAEPLUS_COMPILER "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyaeplus CPU kernels (torch-free; pointers and sizes cross as integers)";
  py::list ops;
  for (auto& [name, fn] : pyaeplus::registry()) {
    fn(m);
    ops.append(name);
  }
  m.def("build_config", [ops]() {
    py::dict d;
#ifdef PYAEPLUS_OPENMP
    d["openmp"] = true;
    d["omp_max_threads"] = pyaeplus::max_threads();
#else
    d["openmp"] = false;
    d["omp_max_threads"] = 1;
#endif
    d["compiler"] = PYAEPLUS_COMPILER;
    d["cuda_built"] = static_cast<bool>(PYAEPLUS_BUILT_CUDA);
    d["ops"] = ops;
    return d;
  });
}
