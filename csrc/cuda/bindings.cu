// pyaeplus._cuda: the CUDA kernels. Each op's .cu file registers its own functions.
#include <pybind11/pybind11.h>

#include "common.cuh"
#include "../registry.h"

namespace py = pybind11;

namespace pyaeplus {
std::vector<std::pair<const char*, BindFn>>& registry() {
  static std::vector<std::pair<const char*, BindFn>> r;
  return r;
}
}  // namespace pyaeplus

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyaeplus CUDA kernels (torch-free; pointers, sizes and the stream cross as integers)";
  py::list ops;
  for (auto& [name, fn] : pyaeplus::registry()) {
    fn(m);
    ops.append(name);
  }
  m.def("build_config", [ops]() {
    py::dict d;
    d["cuda_version"] = PYAEPLUS_CUDA_VERSION;
    d["architectures"] = PYAEPLUS_CUDA_ARCHS;
    d["cudart"] = "static";
    d["ops"] = ops;
    return d;
  });
  // Works without a driver: returns the error instead of raising, so `pyaeplus info` can report it.
  m.def("device_count", []() -> py::tuple {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return py::make_tuple(0, std::string(cudaGetErrorString(e)));
    }
    return py::make_tuple(n, std::string(""));
  });
}
