"""Kernel tests run under the Triton CPU interpreter; the whole directory is
skipped when torch or triton is not installed."""
import importlib.util
import os

os.environ["TRITON_INTERPRET"] = "1"   # must precede the first triton import

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    @pytest.fixture(autouse=True, scope="session")
    def _interpreter_loop_bounds():
        """Runtime loop bounds under triton 3.6's interpreter with numpy >= 2.4
        (see kernels.harness.validate.interpreter_loop_bounds_patch)."""
        from triton.runtime import interpreter

        from kernels.harness.validate import interpreter_loop_bounds_patch

        patched = interpreter_loop_bounds_patch()
        if patched is None:
            yield
            return
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(interpreter, "_patch_lang_tensor", patched)
            yield
