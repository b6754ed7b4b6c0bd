"""Process groups led by the calling process (``lead_group``): a spawned
rank that fails before joining ends rank 0's wait with its error at once,
instead of leaving it in the rendezvous until the group's timeout."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")

from kernels.distributed.group import lead_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _fail(message: str):
    raise RuntimeError(message)


class FailsInTheChild:
    """Unpickled in the spawned rank before it can join: its start fails there."""

    def __reduce__(self):
        return _fail, ("rank 1 could not start",)


def nothing(rank: int, world: int, device: str, *args) -> None:
    return None


def test_a_healthy_group_joins_and_ends():
    with lead_group(2, nothing, cuda=False) as device:
        assert device == "cpu"


def test_a_rank_failing_before_it_joins_ends_the_wait_with_its_error():
    """In a process of its own: rank 0's abandoned join stays blocked until
    that process exits, as the CLI's does on this error."""
    code = ("from kernels.distributed.group import lead_group\n"
            "from tests.kernels.test_group import FailsInTheChild, nothing\n"
            "with lead_group(2, nothing, FailsInTheChild(), cuda=False):\n"
            "    pass\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 1 could not start" in proc.stderr                    # the rank's own error
    assert "rank 1 of the process group failed before joining it" in proc.stderr
    assert time.monotonic() - started < 120       # not the rendezvous timeout (30 minutes)
