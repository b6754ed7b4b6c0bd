"""The real transformer step on pagesim's kernels (``model``), the profiling
run that times it on a GPU (``profile``) and ``pagesim calibrate`` (``cli``).
The committed profiles live in ``kernels/profiles/``."""
