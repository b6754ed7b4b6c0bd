"""The GPU side of pagesim, one room per concern:

* ``kernels.ops`` -- the Triton kernels and their torch references;
* ``kernels.harness`` -- validation and benchmarks of those kernels;
* ``kernels.calibration`` -- the real transformer step, the profiler and
  ``pagesim calibrate``; profiles are committed under ``kernels/profiles/``;
* ``kernels.engine`` -- the real serving engine, which drives the simulator's
  own policy and KV-manager objects against wall-clock time on the GPU.

Importing this package does not import torch or triton; the modules that
need them do, so the simulator runs without them.
"""
from pathlib import Path

PROFILES_DIR = Path(__file__).parent / "profiles"
"""The committed profiles, ``<hardware>/<model>/`` (and ``<hardware>/comm.csv``)."""
