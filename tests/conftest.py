import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run under the interpreter; it must be switched on
    # before any kernel module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The suite is many small ops: on a 2-core CI machine OpenMP's thread hand-offs cost far
    # more than they save.
    torch.set_num_threads(1)
