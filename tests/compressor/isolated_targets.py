"""Module-level functions for the isolate tests (a spawned child imports them by name)."""
import os
import signal


def allocate(nbytes: int) -> int:
    return len(bytearray(nbytes))


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def echo(x):
    return x


def refuse(text: str):
    raise ValueError(text)
