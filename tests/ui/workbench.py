"""Runs for the workbench tests (sort / filter, N-run compare, open in Compress, per-model Pareto): two finished
runs of the demo that differ in keep ratio, and one finished run of a second model (a tiny qwen3_moe folder under
the studio's data folder), all made through the Compress tab by the real worker."""
from __future__ import annotations

import re
from dataclasses import dataclass

from tests.ui.studio import TINY, compress_args, open_demo, wait_run

OTHER = "other-moe"


@dataclass
class Workbench:
    narrow: int          # demo, keep 0.5 (the session's finished_run)
    wide: int            # demo, keep 0.75
    other: int           # the second model, keep 0.5
    other_folder: str


def enqueue(client, name: str, **kw) -> int:
    status = client.predict(name, *compress_args(**kw), api_name="/enqueue")
    m = re.search(r"Run #(\d+) queued", status)
    assert m, status
    return int(m.group(1))


def open_folder(client, folder) -> None:
    status, _ = client.predict("Local folder", str(folder), "", [], api_name="/open_model")
    assert "msg-ok" in status, status


def make_workbench(studio, finished_run) -> Workbench:
    """The runs of `Workbench` (the `workbench` fixture of conftest.py, made once per session)."""
    from transformers import AutoTokenizer

    from compressor.demo import demo_model_dir
    from compressor.testing import tiny_moe
    c = studio.client()
    open_demo(c)
    wide = enqueue(c, "wide", **dict(TINY, keep_ratio=0.75))
    folder = studio.home / "models" / OTHER
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    tiny_moe("qwen3_moe", hidden=32, experts=8, top_k=2, width=16, layers=2, vocab=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    open_folder(c, folder)
    other = enqueue(c, "other model", **TINY)
    for run_id in (wide, other):
        assert "succeeded" in wait_run(c, run_id)["status"]
    return Workbench(narrow=finished_run, wide=wide, other=other, other_folder=str(folder))
