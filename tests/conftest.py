"""Test setup: Triton's interpreter on machines without CUDA, and shared fixtures."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
