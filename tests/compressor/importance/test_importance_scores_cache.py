"""Report tables, exact save/load, and the on-disk score cache (hits run no forward pass)."""
import json

import pandas as pd
import pytest
import torch

from compressor.importance import AnalyzeConfig, ImportanceReport, analyze, data_fingerprint, load_or_analyze
from compressor.importance.cache import scores_cache_dir
from compressor.testing import tiny_inputs, tiny_moe


def _batches(seed=0):
    ids = tiny_inputs(batch=2, seq=10, seed=seed)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


def _tensors(report):
    out = {}
    for part in ("experts", "neurons", "layers"):
        obj = getattr(report, part)
        for k, v in vars(obj).items():
            if torch.is_tensor(v):
                out[f"{part}.{k}"] = v
            elif isinstance(v, dict):
                out.update({f"{part}.{k}.{n}": t for n, t in v.items()})
    return out


@pytest.fixture(scope="module")
def report():
    return analyze(tiny_moe("deepseek_v3"), _batches(), config=AnalyzeConfig(taylor=True))


def test_frames_are_long_format_with_hand_checkable_rows(report):
    frames = report.to_frames()
    ex, nr, ly = frames["experts"], frames["neurons"], frames["layers"]
    L, E, I = report.neurons.abs_sum.shape
    assert list(ex.columns) == ["layer", "expert", "tokens", "frequency", "weighted_frequency", "reap", "man",
                                "ean_sum", "max_abs_output", "taylor", "taylor_per_batch"]
    assert list(nr.columns) == ["layer", "expert", "neuron", "activation", "mean_abs", "down_norm", "taylor",
                                "taylor_per_batch"]
    assert len(ex) == L * E and len(nr) == L * E * I and len(ly) == 3
    assert sorted(ex.layer.unique()) == [1, 2]                 # DeepSeek's layer 0 is dense
    row = nr[(nr.layer == 2) & (nr.expert == 5) & (nr.neuron == 7)].iloc[0]
    assert row.activation == pytest.approx(report.neurons.activation[1, 5, 7].item())
    assert ex.groupby("layer").frequency.sum().tolist() == pytest.approx([2.0, 2.0])
    assert ly.moe.tolist() == [False, True, True]
    assert {"block_influence", "dlp_score", "owl_outlier_ratio"} <= set(ly.columns)


def test_save_load_round_trip_is_exact(report, tmp_path):
    report.save(tmp_path / "s")
    again = ImportanceReport.load(tmp_path / "s")
    a, b = _tensors(report), _tensors(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.experts.layers == [1, 2] and again.experts.top_k == 2 and again.family == "deepseek_v3"
    assert again.meta == json.loads(json.dumps(report.meta))
    table = pd.read_csv(tmp_path / "s" / "experts.csv")
    assert table.reap.tolist() == pytest.approx(report.experts.reap.reshape(-1).tolist())
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["tables"] == {"experts": "experts.csv", "neurons": "neurons.csv", "layers": "layers.csv"}
    assert summary["experts_by_reap"]["1"][0] == int(report.experts.reap[0].argmax())


def test_load_refuses_a_folder_without_scores(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        ImportanceReport.load(tmp_path)
    with pytest.raises(ValueError, match="table format"):
        analyze(tiny_moe("olmoe"), _batches(), config=AnalyzeConfig(taylor=False)).save(tmp_path, table_format="xls")


def test_cache_hit_returns_identical_tensors_without_running_the_model(tmp_path):
    model = tiny_moe("gpt_oss")
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    cfg = AnalyzeConfig(taylor=False)
    first = load_or_analyze(model, _batches(), config=cfg, cache_dir=tmp_path)
    assert forwards == [1] and first.meta["cache"]["hit"] is False
    second = load_or_analyze(model, _batches(), config=cfg, cache_dir=tmp_path)
    assert forwards == [1] and second.meta["cache"]["hit"] is True
    assert second.meta["cache"]["key"] == first.meta["cache"]["key"]
    a, b = _tensors(first), _tensors(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # other data, other settings, or other weights: a miss
    load_or_analyze(model, _batches(seed=5), config=cfg, cache_dir=tmp_path)
    load_or_analyze(model, _batches(), config=AnalyzeConfig(taylor=False, outlier_m=3.0), cache_dir=tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    load_or_analyze(model, _batches(), config=cfg, cache_dir=tmp_path)
    assert len(forwards) == 4
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 4


def test_an_entry_that_computed_more_serves_a_request_for_less(tmp_path):
    """One key per (weights, data, settings): Explore's full analysis serves a run that needs only neuron scores,
    and `slim` after `analyze` reuses the scores; a request for more (Taylor) computes and stores its own entry."""
    model = tiny_moe("qwen3_moe")
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))
    full = load_or_analyze(model, _batches(), config=AnalyzeConfig(taylor=False), cache_dir=tmp_path)
    part = load_or_analyze(model, _batches(), config=AnalyzeConfig(want=("neurons",), taylor=False),
                           cache_dir=tmp_path)
    assert part.meta["cache"]["hit"] and part.meta["cache"]["key"] == full.meta["cache"]["key"] and len(forwards) == 1
    assert torch.equal(part.neurons.activation, full.neurons.activation)
    more = load_or_analyze(model, _batches(), config=AnalyzeConfig(want=("neurons",), taylor=True), cache_dir=tmp_path)
    assert not more.meta["cache"]["hit"] and more.neurons.taylor is not None
    again = load_or_analyze(model, _batches(), config=AnalyzeConfig(want=("experts",), taylor=False),
                            cache_dir=tmp_path)
    assert again.meta["cache"]["hit"] and again.meta["cache"]["dir"] == full.meta["cache"]["dir"]
    entries = sorted(p.name for p in (tmp_path / full.meta["cache"]["key"]).iterdir())
    assert entries == ["experts-layers-neurons-wanda", "neurons+taylor"]


def test_cache_location_and_data_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_CACHE", str(tmp_path))
    assert scores_cache_dir() == tmp_path / "scores"
    ids = tiny_inputs()
    mask = torch.ones_like(ids)
    assert data_fingerprint([ids]) == data_fingerprint([{"input_ids": ids, "attention_mask": mask}])
    mask[0, -1] = 0
    assert data_fingerprint([ids]) != data_fingerprint([{"input_ids": ids, "attention_mask": mask}])
    report = load_or_analyze(tiny_moe("mixtral"), [ids], config=AnalyzeConfig(taylor=False, want=("experts",)))
    assert report.meta["cache"]["dir"].startswith(str(tmp_path / "scores"))
    assert report.neurons is None and report.layers is None and "experts" in report.to_frames()
