"""The lm-eval tasks this project ships, built from the held-out text (`compressor/demo/assets/heldout.txt`), so
lm-evaluation-harness runs offline on any model with a tokenizer.

Both are 4-way multiple choice scored by lm-eval's log-likelihood (`acc`; `acc_norm` divides by the choice's bytes):

    sotu_completion      context = the sentence before (when the paragraph has one) and the first half of a
                         sentence of 12+ words; choices = its second half and the second halves of three sentences of
                         other paragraphs with about as many words (HellaSwag-like endings)
    sotu_cloze           context = a sentence of 8+ words without its last word; choices = that word and three other
                         sentence-final words of similar length (LAMBADA-like)

Items are drawn with `random.Random(seed)` over the held-out paragraphs, so the files are a pure function of the
shipped text; `tests/compressor/evaluate/test_harness.py` rebuilds them and compares with the shipped copies.

    rows = completion_items(load_split("test"), n=400)        # [{"context", "choices", "label"}]
    write_local_tasks(TASK_DIR)                                  # rewrites the shipped JSONL files
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

TASK_DIR = Path(__file__).parent / "lm_tasks"
LOCAL_TASKS = ("sotu_completion", "sotu_cloze")
ITEMS, SEED, CHOICES = 400, 0, 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][a-z]+$")


def sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? followed by a capital; whitespace collapsed."""
    text = " ".join(paragraph.split())
    return [s for s in _SENTENCE_END.split(text) if s]


def _paragraphs(text: str) -> list[list[str]]:
    return [sentences(p) for p in text.split("\n\n") if p.strip()]


def _shuffled(answer: str, distractors: list[str], rng: random.Random) -> dict:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"choices": choices, "label": choices.index(answer)}


def completion_items(text: str, *, n: int = ITEMS, seed: int = SEED) -> list[dict]:
    """`n` items {"context": previous sentence + first half, "choices": [4 second halves], "label": the true one}."""
    halves = []                                       # (paragraph, context, second half, words in it)
    for i, p in enumerate(_paragraphs(text)):
        for k, s in enumerate(p):
            words = s.split()
            if not 12 <= len(words) <= 60:
                continue
            cut = len(words) // 2
            before = (p[k - 1] + " ") if k and len(p[k - 1]) <= 300 else ""
            halves.append((i, before + " ".join(words[:cut]), " ".join(words[cut:]), len(words) - cut))
    rng = random.Random(seed)
    out = []
    for i, context, answer, size in rng.sample(halves, min(n, len(halves))):
        near = [h for j, _, h, m in halves if j != i and abs(m - size) <= max(2, size // 4) and h != answer]
        out.append({"context": context, **_shuffled(answer, rng.sample(near, CHOICES - 1), rng)})
    return out


def cloze_items(text: str, *, n: int = ITEMS, seed: int = SEED) -> list[dict]:
    """`n` items {"context": sentence minus its last word, "choices": [4 words], "label": index of that word}."""
    found = []
    for p in _paragraphs(text):
        for s in p:
            words = s.rstrip(".!?").split()
            if len(words) >= 8 and _WORD.match(words[-1]) and len(words[-1]) >= 4:
                found.append((" ".join(words[:-1]), words[-1]))
    vocab = sorted({w for _, w in found})
    rng = random.Random(seed)
    out = []
    for context, answer in rng.sample(found, min(n, len(found))):
        near = [w for w in vocab if w.lower() != answer.lower() and abs(len(w) - len(answer)) <= 2]
        out.append({"context": context, **_shuffled(answer, rng.sample(near, CHOICES - 1), rng)})
    return out


BUILDERS = {"sotu_completion": completion_items, "sotu_cloze": cloze_items}


def task_rows(name: str) -> list[dict]:
    """The rows of shipped task `name`, rebuilt from the held-out text."""
    from compressor.data import load_split
    return BUILDERS[name](load_split("test"))


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_local_tasks(folder: Path = TASK_DIR) -> list[Path]:
    """(Re)write `<name>.jsonl` for every shipped task into `folder`; the YAML files are written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in LOCAL_TASKS:
        path = folder / f"{name}.jsonl"
        path.write_text(jsonl_text(task_rows(name)), encoding="utf-8")
        paths.append(path)
    return paths
