"""What Runs shows follows the runs (issue 27, items 8 and 10): the picked run's "queued behind #1" is redrawn when
#1 ends (the details are redrawn when their signature changes, so the signature holds the wait), and Cancel is
offered only for a queued or running run."""
from types import SimpleNamespace

from ui import runs


def _run(rid, status, **kw):
    return SimpleNamespace(id=rid, status=status, progress=kw.get("progress", 0.0), step=None, loss=None,
                           message=None, stage=None, parent_run_id=None)


def test_the_picked_queued_runs_details_change_when_the_run_ahead_ends():
    before = [_run(1, "running", progress=0.9), _run(2, "queued")]
    after = [_run(1, "succeeded", progress=1.0), _run(2, "queued")]
    assert runs._detail_signature(2, before) != runs._detail_signature(2, after)


def test_cancel_is_offered_for_queued_and_running_runs_only():
    for status, offered in (("queued", True), ("running", True), ("succeeded", False), ("failed", False),
                            ("cancelled", False)):
        cancel = runs.action_labels(4, status)[0]
        assert cancel["interactive"] is offered and cancel["value"] == "Cancel #4"
