"""`analyze`, `slim` and `eval` take --streaming auto|on|off; both paths give the same files and figures, and a
model whose single layer cannot fit is refused before any work with the figures."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compressor import cli
from compressor.engine.plan import LayerTooLargeError, plan_execution
from compressor.testing import tiny_moe


pytestmark = pytest.mark.usefixtures("studio_cache")


def _slim(folder, out, streaming, capsys):
    args = ["slim", str(folder), "--out", str(out), "--expert-keep-ratio", "0.5", "--experts-keep", "6",
            "--layers-drop", "1", "--tokens", "256", "--seq-len", "32", "--no-cache", "--streaming", streaming]
    assert cli.main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_slim_streamed_writes_the_in_memory_checkpoint(tiny_dir, tmp_path, capsys):
    on = _slim(tiny_dir, tmp_path / "on", "on", capsys)
    off = _slim(tiny_dir, tmp_path / "off", "off", capsys)
    assert on["streamed"] is True and off["streamed"] is False
    assert on["params_after"] == off["params_after"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "on" / "checkpoint").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "off" / "checkpoint").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((tmp_path / "on" / "slim_report.json").read_text())
    assert report["execution"]["reason"] == "streaming on (asked)" and len(report["layer_seconds"]) == 2
    assert (tmp_path / "on" / "checkpoint" / "tokenizer.json").is_file()


def test_auto_streams_when_the_model_does_not_fit_comfortably(tiny_dir, monkeypatch):
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "1gb")
    assert not plan_execution(tiny_dir, "auto", tokens=256, taylor=True).streaming
    model_bytes = plan_execution(tiny_dir, "off", tokens=256, taylor=True).model_bytes
    monkeypatch.setenv("MOE_STUDIO_MEMORY", str(int(model_bytes * 3)))
    plan = plan_execution(tiny_dir, "auto", tokens=256, taylor=False)
    assert plan.streaming and "layer by layer" in plan.reason


def test_a_layer_that_cannot_fit_is_refused_with_the_figures(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOE_STUDIO_MEMORY", "20kb")
    with pytest.raises(LayerTooLargeError, match=r"one decoder layer is 0\.\d MB; .* but this machine has 0\.0 MB"):
        plan_execution(tiny_dir, "on", tokens=256, taylor=False)
    assert cli.main(["slim", str(tiny_dir), "--out", str(tmp_path / "x"), "--expert-keep-ratio", "0.5",
                     "--streaming", "on"]) == 1
    assert "one decoder layer is" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_analyze_and_eval_streamed_match_in_memory(tiny_dir, tmp_path, capsys):
    for mode in ("on", "off"):
        assert cli.main(["analyze", str(tiny_dir), "--out", str(tmp_path / mode), "--tokens", "256", "--seq-len",
                         "32", "--no-cache", "--streaming", mode]) == 0
        capsys.readouterr()
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "on" / "scores.safetensors"), load_file(tmp_path / "off" / "scores.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-9)
    figures = {}
    for mode in ("on", "off"):
        assert cli.main(["eval", str(tiny_dir), "--baseline", str(tiny_dir), "--json", "--no-speed", "--tokens",
                         "256", "--seq-len", "32", "--no-progress", "--streaming", mode]) == 0
        figures[mode] = json.loads(capsys.readouterr().out)
    assert figures["on"]["streamed"] is True
    q_on, q_off = figures["on"]["quality"], figures["off"]["quality"]
    assert q_on["tokens"] == q_off["tokens"] and q_on["perplexity"] == pytest.approx(q_off["perplexity"], rel=1e-6)
    assert q_on["agreement"] == 1.0 and figures["on"]["size"]["params_total"] == figures["off"]["size"]["params_total"]


def test_streaming_on_refuses_pickle_weights(tmp_path, capsys):
    model = tiny_moe("mixtral")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert cli.main(["slim", str(tmp_path), "--out", str(tmp_path / "o"), "--expert-keep-ratio", "0.5",
                     "--allow-pickle", "--streaming", "on"]) == 1
    assert "pickle weights" in capsys.readouterr().err
