"""What the Runs tab draws of a run, without a server: 'starting worker' until a job reports, 'queued behind #k'
while another runs, the ▶ mark on the selected run whatever its row, the lineage, the whole-run ETA cell."""
from datetime import datetime, timezone
from types import SimpleNamespace

from ui.run_table import run_row
from ui.run_view import STARTING, display_frame, progress_cell, time_cell, waiting_text

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _run(i, status, *, progress=0.0, stage="", parent=None):
    return SimpleNamespace(id=i, name=f"r{i}", status=status, progress=progress, stage=stage, message="",
                           recipe={"model": "demo", "slimming": {"expert_keep_ratio": 0.5}}, metrics=None, tags=[],
                           notes="", parent_run_id=parent, created_at=T0, started_at=None, finished_at=None,
                           heartbeat_at=None)


def test_a_run_that_has_not_reported_says_what_it_waits_for():
    queued, claimed = _run(1, "queued"), _run(2, "running")
    assert waiting_text(queued, [queued]) == STARTING == "starting worker"
    assert waiting_text(claimed, [claimed]) == STARTING                      # claimed, no progress event yet
    assert waiting_text(queued, [queued, claimed]) == "queued behind #2"
    reporting = _run(3, "running", progress=0.1, stage="load")
    assert waiting_text(reporting, [reporting]) is None
    assert "starting worker" in progress_cell(run_row(claimed), STARTING)
    assert "10% · load" in progress_cell(run_row(reporting), None)


def test_the_mark_follows_the_selected_run_and_the_lineage_is_shown():
    runs = [_run(3, "succeeded", progress=1.0, parent=1), _run(2, "failed"), _run(1, "succeeded", progress=1.0)]
    by_id = {r.id: r for r in runs}
    rows = [run_row(r) for r in runs]
    frame = display_frame(rows, by_id, selected=2)
    assert frame[""].tolist() == ["", "▶", ""] and frame["run"].tolist() == [3, 2, 1]
    assert display_frame(rows[::-1], by_id, selected=2)[""].tolist() == ["", "▶", ""]
    assert display_frame(rows, by_id, selected=None)[""].tolist() == ["", "", ""]
    assert frame["name"].tolist()[0] == "r3 ← #1"


def test_time_cell_shows_the_whole_run_eta_of_running_and_queued_runs():
    running = run_row(_run(1, "running", progress=0.5))
    running.seconds, running.eta_s = 30.0, 95.0
    assert time_cell(running) == "30s · ETA 1m35s"
    queued = run_row(_run(2, "queued"))
    queued.eta_s = 60.0
    assert time_cell(queued) == "~1m00s"
    done = run_row(_run(3, "succeeded"))
    done.seconds = 12.0
    assert time_cell(done) == "12s" and time_cell(run_row(_run(4, "queued"))) == ""
