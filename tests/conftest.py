"""pytest setup shared by every test file.

Triton reads TRITON_INTERPRET when it decorates kernels, and several test files import compass_nbdev modules that
import Triton. Without a GPU, the interpreter is switched on here, before any test file is collected, so that
`pytest tests/` gives the same results in any order and for any subset of files (tools/test.sh sets it too).
"""
import os
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
