"""run_isolated: a child with a memory ceiling; its failures come back as errors and never take the caller down."""
import os

import pytest

from compressor.isolate import IsolatedFailure, run_isolated, shutdown_isolated
from tests.compressor.isolated_targets import allocate, die, echo, refuse

LIMIT = 1 << 30


@pytest.fixture(autouse=True, scope="module")
def _stop_child():
    yield
    shutdown_isolated()


def test_results_and_errors_come_back():
    assert run_isolated(echo, {"a": [1, 2]}, memory_bytes=LIMIT) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="no such model"):
        run_isolated(refuse, "no such model", memory_bytes=LIMIT)


def test_an_allocation_over_the_ceiling_fails_in_the_child_only():
    with pytest.raises(MemoryError):
        run_isolated(allocate, 2 * LIMIT, memory_bytes=LIMIT)
    assert run_isolated(allocate, 1 << 20, memory_bytes=LIMIT) == 1 << 20     # the same child still works
    assert os.getpid()                                                          # and so does this process


def test_a_dead_child_is_replaced():
    with pytest.raises(IsolatedFailure, match="died"):
        run_isolated(die, memory_bytes=LIMIT)
    assert run_isolated(echo, 7, memory_bytes=LIMIT) == 7
