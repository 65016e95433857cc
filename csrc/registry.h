// Each op's source file registers its own pybind11 bindings, so adding an op never edits
// bindings.cpp / cuda/bindings.cu:   PYAEPLUS_REGISTER(topk, bind_topk);
#pragma once

#include <pybind11/pybind11.h>

#include <utility>
#include <vector>

namespace pyaeplus {

using BindFn = void (*)(pybind11::module_&);

// Defined once per extension module (bindings.cpp for _C, cuda/bindings.cu for _cuda).
std::vector<std::pair<const char*, BindFn>>& registry();

struct Register {
  Register(const char* name, BindFn fn) { registry().emplace_back(name, fn); }
};

}  // namespace pyaeplus

#define PYAEPLUS_REGISTER(name, fn) static ::pyaeplus::Register pyaeplus_register_##name(#name, fn)
