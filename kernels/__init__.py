"""Triton attention kernels, their torch references, the validation and
benchmark harnesses, and the GPU profiler that calibrates pagesim's clock.

Importing this package does not import torch or triton; each kernel module
does, so the simulator runs without them.
"""
