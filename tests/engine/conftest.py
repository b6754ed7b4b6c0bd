"""Engine tests run the real engine on the CPU with the torch reference
kernels; the directory is skipped when torch is not installed."""
import importlib.util

if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]
