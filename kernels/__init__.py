"""Triton kernels for multi-LoRA serving, each with a pure-torch reference of the same signature."""
