"""The experiment-workbench services over HTTP (gradio_client): the runs table sorted and filtered, tags and notes,
CSV export, one Pareto front per base model, N-run compare with a recipe diff, open in Compress and pasted YAML into
the form, the expected wall time from earlier runs."""
from __future__ import annotations

import csv
import re

import yaml

from compressor.recipe import Recipe
from tests.ui.studio import N_FORM, TINY, compress_args, figure, open_demo
from tests.ui.workbench import OTHER, open_folder

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


def _table(client, *, status=(), model=(), tag="", text="", sort="run", descending=True, pareto=""):
    out = client.predict(None, pareto, list(status), list(model), tag, text, sort, descending,
                         api_name="/runs_filter")
    table = out[0]
    rows = [dict(zip(table["headers"], r)) for r in table["data"]]
    return rows, out


def _ids(rows):
    return [int(r["run"]) for r in rows]


def test_sort_filter_tags_notes_and_csv(studio, workbench):
    c = studio.client()
    wb = workbench
    rows, out = _table(c, status=["succeeded"], sort="perplexity", descending=False)
    ppl = [float(r["perplexity"]) for r in rows]
    assert ppl == sorted(ppl) and {wb.narrow, wb.wide, wb.other} <= set(_ids(rows))
    assert all("succeeded" in r["status"] for r in rows)
    rows, _ = _table(c, status=["succeeded"], sort="keep ratio", descending=True)
    keeps = [float(r["keep"]) for r in rows]
    assert keeps == sorted(keeps, reverse=True) and _ids(rows)[0] == wb.wide
    rows, _ = _table(c, model=[OTHER])
    assert _ids(rows) == [wb.other] and rows[0]["model"] == OTHER

    status = c.predict(wb.wide, "baseline, keep-0.75", "the wide one", api_name="/save_notes")
    assert f"Run #{wb.wide}" in status and "baseline, keep-0.75" in status
    rows, _ = _table(c, tag="keep-0.75")
    assert _ids(rows) == [wb.wide] and rows[0]["tags"] == "baseline, keep-0.75"
    assert _ids(_table(c, text="WIDE ONE")[0]) == [wb.wide]                  # notes are searched
    assert _ids(_table(c, tag="keep-0.75", status=["failed"])[0]) == []

    path = c.predict(["succeeded"], [], "", "", "perplexity", False, api_name="/runs_csv")
    path = path["value"] if isinstance(path, dict) else path                 # a visibility update carries it
    with open(path, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [int(r["run"]) for r in got] == _ids(_table(c, status=["succeeded"], sort="perplexity",
                                                       descending=False)[0])
    wide = next(r for r in got if int(r["run"]) == wb.wide)
    assert wide["tags"] == "baseline,keep-0.75" and wide["notes"] == "the wide one"
    assert float(wide["keep_ratio"]) == 0.75 and float(wide["size_bytes"]) > 0 and float(wide["seconds"]) > 0


def test_one_pareto_front_per_base_model(studio, workbench):
    """The demo's runs and the other model's never share a front, and each front's title names its group."""
    c = studio.client()
    wb = workbench
    evaluation = f"eval {TINY['eval_tokens']} x 256"
    for key, inside, outside in ((f"demo · {evaluation}", {wb.narrow, wb.wide}, {wb.other}),
                                 (f"{OTHER} · {evaluation}", {wb.other}, {wb.narrow, wb.wide})):
        fig = figure(_table(c, pareto=key)[1][8])
        runs = next(t for t in fig["data"] if t.get("name") == "runs")
        shown = {int(t.lstrip("#")) for t in runs["text"]}
        assert inside <= shown and not (outside & shown), (key, shown)
        assert key in fig["layout"]["title"]["text"]


def test_compare_n_runs_of_one_model_with_the_recipe_diff(studio, workbench):
    c = studio.client()
    wb = workbench
    status, metrics, diff, plot = c.predict([wb.narrow, wb.wide], 0.5, True, api_name="/compare_runs")
    assert "2 runs of demo" in status and "msg-ok" in status
    rows = {r[0]: r[1:] for r in diff["data"]}
    assert rows == {"slimming.expert_keep_ratio": ["0.5", "0.75"]}            # the names and keep ratio differ only
    assert diff["headers"] == ["field", f"#{wb.narrow} · fixture run", f"#{wb.wide} · wide"]
    mrows = {r[0]: r[1:] for r in metrics["data"]}
    assert float(mrows["perplexity"][0]) > 1 and float(mrows["perplexity"][1]) != float(mrows["perplexity"][2])
    fig = figure(plot)
    assert [t["name"] for t in fig["data"]] == [f"#{wb.narrow} · fixture run", f"#{wb.wide} · wide"]
    assert fig["layout"]["yaxis"]["type"] == "log"
    refused = c.predict([wb.narrow, wb.other], 0.0, False, api_name="/compare_runs")[0]
    assert "msg-error" in refused and "different base models" in refused and OTHER in refused


def test_open_in_compress_and_pasted_yaml_fill_the_form(studio, workbench):
    c = studio.client()
    wb = workbench
    open_demo(c)
    out = c.predict(wb.wide, api_name="/open_in_compress")
    values, status = out[:N_FORM], out[N_FORM]
    values = [v["value"] if isinstance(v, dict) and v.get("__type__") == "update" else v   # the fitted sliders
              for v in values]                                                             # come as updates
    assert values[0] == 0.75 and values[8] == TINY["steps"] and values[14] == TINY["calib_tokens"]
    assert f"run #{wb.wide}" in status
    _, text = c.predict(*values, api_name="/estimate")[:2]
    run = c.predict(wb.wide, api_name="/run_detail")[2]                       # the run's recipe YAML
    assert Recipe.parse(yaml.safe_load(text)) == Recipe.parse(yaml.safe_load(run))   # the round trip is exact
    queued = c.predict("edited", *values, api_name="/enqueue")
    new = int(re.search(r"Run #(\d+) queued", queued).group(1))
    head = c.predict(new, api_name="/run_detail")[0]
    assert f"parent run #{wb.wide}" in head
    c.predict(new, api_name="/cancel_run")

    pasted = Recipe.parse({"model": "demo", "slimming": {"expert_keep_ratio": 0.3}, "stages": 2,
                           "distill": {"steps": 40, "batch_size": 2}}).to_yaml()
    out = c.predict(pasted, None, api_name="/load_recipe")
    assert out[0] == 0.3 and out[7] == 2 and out[8] == 40
    assert "distill.batch_size: 2" in out[N_FORM]                     # kept, and named: no control holds it
    bad = c.predict("slimming: {expert_keep_ratio: 7}", None, api_name="/load_recipe")[N_FORM]
    assert "msg-error" in bad and "expert_keep_ratio" in bad


def test_expected_wall_time_comes_from_earlier_runs_of_the_model(studio, workbench):
    c = studio.client()
    open_demo(c)
    text = c.predict(*compress_args(**TINY), api_name="/cost")
    m = re.search(r"Expected wall time ≈ (\S+) \(from (\d+) earlier runs? of this model", text)
    assert m and int(m.group(2)) >= 2, text
    c2 = studio.client()
    open_folder(c2, workbench.other_folder)
    assert "from 1 earlier run of this model" in c2.predict(*compress_args(**TINY), api_name="/cost")
    fresh = studio.home / "models" / "never-run"
    import shutil
    shutil.copytree(workbench.other_folder, fresh, dirs_exist_ok=True)
    open_folder(c2, fresh)
    assert "no earlier run of this model" in c2.predict(*compress_args(**TINY), api_name="/cost")
