import os

import torch

# Without a GPU the Triton kernels run under the interpreter; it must be switched on
# before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
