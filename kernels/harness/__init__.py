"""Validation and benchmark harnesses for the kernels of ``kernels.ops``
(``pagesim kernels validate|bench``)."""
