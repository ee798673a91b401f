"""Run a function in a child process with a memory ceiling, so that a hostile or broken input can exhaust only the
child: the web process (and the embedded worker and Redis it supervises) stays up.

The child is a long-lived `spawn` process (one at a time, reused: the first call pays the torch import, later calls
do not) whose address space is capped with `RLIMIT_AS`. A child that dies (killed, or out of memory in native code)
is replaced on the next call; the caller gets `IsolatedFailure` saying so. Exceptions raised in the child come back
as themselves (MemoryError included). The child exits within half a second of its parent's death (a `kill -9` of
the app included), and multiprocessing's resource tracker with it.

    summary = run_isolated(describe_source, "path/to/model", memory_bytes=4 << 30, timeout_s=120)
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

DEFAULT_MEMORY = 4 << 30     # address space, not resident memory: a torch process maps ~1 GB before any work


class IsolatedFailure(RuntimeError):
    """The child process died or overran its time; the message says what to try."""


PARENT_POLL_S = 0.5


def _limit_memory(memory_bytes: int) -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.environ.setdefault("OMP_NUM_THREADS", "1")     # one arena per thread counts against the address space
    _exit_with_parent(os.getppid())


def _exit_with_parent(parent: int) -> None:
    """End this child when the process that started it is gone, even SIGKILLed (then no atexit hook runs there).
    A thread polls the parent pid: PR_SET_PDEATHSIG would fire when the *thread* that spawned the child ends, and
    the pool spawns its child from whichever request thread submitted first, which the web server may retire.
    With the child gone, multiprocessing's resource tracker (kept open by the child's copy of its pipe) ends too."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _Child:
    def __init__(self):
        self.pool: ProcessPoolExecutor | None = None
        self.memory = 0
        self.lock = threading.Lock()

    def get(self, memory_bytes: int) -> ProcessPoolExecutor:
        if self.pool is None or self.memory != memory_bytes:
            self.close()
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_limit_memory, initargs=(memory_bytes,))
            self.memory = memory_bytes
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            children = list((getattr(self.pool, "_processes", None) or {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in children:
                p.kill()
            self.pool = None


_CHILD = _Child()


def run_isolated(fn, *args, memory_bytes: int = DEFAULT_MEMORY, timeout_s: float = 300.0):
    """`fn(*args)` in the memory-capped child (fn must be importable: a module-level function)."""
    with _CHILD.lock:
        pool = _CHILD.get(memory_bytes)
        future = pool.submit(fn, *args)
        try:
            return future.result(timeout=timeout_s)
        except BrokenProcessPool:
            _CHILD.close()
            raise IsolatedFailure(f"the process opening the model died (its memory ceiling is "
                                  f"{memory_bytes / 2**30:.1f} GiB); the model's files are damaged or describe a "
                                  "model far larger than they hold.") from None
        except FutureTimeout:
            _CHILD.close()
            raise IsolatedFailure(f"opening the model took more than {timeout_s:.0f} s and was stopped") from None


def shutdown_isolated() -> None:
    with _CHILD.lock:
        _CHILD.close()
