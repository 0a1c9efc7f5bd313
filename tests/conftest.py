"""Test setup: Triton's interpreter and one torch thread on machines without CUDA."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The tests' tiny-model ops are too small to gain from a second thread, and on a busy 2-core machine the
    # second thread spins at every op (harness profile's test: 46 s with two threads, 11 s with one). Only this
    # process: the servers the e2e tests start keep their own thread settings.
    torch.set_num_threads(1)
