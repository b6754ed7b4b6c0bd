"""Where sweep points and capacity searches run: local processes, or Ray.

``pool(backend, jobs, address)`` returns an object with
``imap_unordered(fn, items)``, yielding ``fn(item)`` as each finishes:

* ``local`` (default): a ``multiprocessing`` pool of ``jobs`` processes on
  this machine (one process: in this one). Workers ignore SIGINT: the parent
  stops them on Ctrl-C, so one Ctrl-C never leaves a pool half torn down.
* ``ray``: one Ray task per item on an existing Ray cluster (``--address
  ray://HOST:10001`` or ``auto``), or on a local Ray instance started for
  the command when no address is given. Ray is an optional extra
  (``pip install 'pagesim[ray]'``); the cluster's workers need pagesim
  installed. ``fn`` and its items must be picklable and must not rely on
  this machine's files: results come back to this process, which writes
  every output.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Any, Callable, Iterable, Iterator

BACKENDS = ("local", "ray")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalPool:
    remote = False

    def __init__(self, jobs: int):
        self.jobs = max(1, jobs)

    def imap_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        items = list(items)
        if self.jobs == 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        pool = multiprocessing.Pool(min(self.jobs, len(items)), initializer=_ignore_sigint)
        try:
            yield from pool.imap_unordered(fn, items)
            pool.close()
        except BaseException:
            pool.terminate()                 # Ctrl-C or a failure: stop the others now
            raise
        finally:
            pool.join()


class RayPool:
    remote = True

    def __init__(self, address: str | None, jobs: int | None):
        try:
            import ray
        except ImportError:
            raise ValueError("--backend ray: Ray is not installed; pip install 'pagesim[ray]' "
                             "(or use --backend local)") from None
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
            if address:
                kwargs["address"] = address
            elif jobs:
                kwargs["num_cpus"] = jobs
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ValueError(f"--address {address}: cannot reach a Ray cluster there ({exc})") from None

    def imap_unordered(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        ray = self._ray
        task = ray.remote(num_cpus=1)(fn)
        pending = [task.remote(item) for item in items]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise


def pool(backend: str, jobs: int, address: str | None = None) -> LocalPool | RayPool:
    if backend == "local":
        if address:
            raise ValueError("--address: applies to --backend ray only")
        return LocalPool(jobs)
    if backend == "ray":
        return RayPool(address, jobs)
    raise ValueError(f"--backend {backend!r}: allowed: {', '.join(BACKENDS)}")
