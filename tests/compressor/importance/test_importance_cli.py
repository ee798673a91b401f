"""`python -m compressor analyze` end to end on a tiny saved model with its own tokenizer."""
import json

import pandas as pd
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from compressor.cli import main
from compressor.testing import tiny_moe

TEXT = ("We the people of the United States, in order to form a more perfect union, establish justice, insure "
        "domestic tranquility, provide for the common defence, promote the general welfare. ") * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-qwen3")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(d)
    tiny_moe("qwen3_moe", vocab=tok.get_vocab_size()).save_pretrained(d)
    (d / "calib.txt").write_text(TEXT)
    return d


def test_analyze_cli_writes_tables_summary_and_uses_the_cache(model_dir, tmp_path, capsys):
    args = ["analyze", str(model_dir), "--out", str(tmp_path / "out"), "--tokens", "256", "--seq-len", "32",
            "--batch-size", "4", "--threads", "1", "--text", str(model_dir / "calib.txt"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    digest = json.loads(capsys.readouterr().out)
    assert digest["family"] == "qwen3_moe" and digest["tokens"] == 256 and digest["cache_hit"] is False
    assert digest["taylor"] is True and digest["tokens_per_s"] > 0
    out = tmp_path / "out"
    assert {"experts.csv", "neurons.csv", "layers.csv", "summary.json", "scores.safetensors"} <= set(digest["files"])
    experts = pd.read_csv(out / "experts.csv")
    assert len(experts) == 2 * 8 and experts.groupby("layer").frequency.sum().tolist() == pytest.approx([2.0, 2.0])
    assert experts.taylor.notna().all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["calibration"] == {"tokens": 256, "seq_len": 32, "batch_size": 4}
    assert summary["meta"]["batches"] == 2
    # same model, text and settings again: served from the cache
    assert main(args[:3] + [str(tmp_path / "out2")] + args[4:]) == 0
    assert json.loads(capsys.readouterr().out)["cache_hit"] is True
    assert pd.read_csv(tmp_path / "out2" / "experts.csv").equals(experts)


def test_analyze_cli_reports_bad_settings_without_a_traceback(model_dir, tmp_path, capsys):
    code = main(["analyze", str(model_dir), "--out", str(tmp_path), "--tokens", "16", "--seq-len", "32"])
    assert code == 1
    assert "tokens" in capsys.readouterr().err
