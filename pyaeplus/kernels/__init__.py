"""Triton kernels, one file per op (``@triton.jit`` kernels and their launchers).

Nothing here registers with torch.library; the launchers take tensors (CUDA, or CPU under
``TRITON_INTERPRET=1``) and return tensors. Import a submodule only when a kernel runs:
importing triton is slow and it is optional on CPU-only machines.
"""
