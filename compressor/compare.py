"""Side-by-side generation of two models from one prompt, with the same decoding settings and seed.

Both models decode the prompt with identical settings; for sampling, the random generator is reseeded with the same
seed before each model, so any difference comes from the weights. Then both read one shared text (the prompt plus
model A's continuation) with teacher forcing, and for every continuation position t we report:

    agree_t   = argmax_v p_A(v | x_<t) == argmax_v p_B(v | x_<t)          (top-1 agreement)
    top-5     = the five most likely next tokens of each model with their probabilities p(v | x_<t)

    cmp = compare_models(teacher, student, tokenizer, "The economy", settings=DecodeSettings(max_new_tokens=24))
    cmp.a.text, cmp.b.text          # the two continuations
    cmp.agreement_rate              # mean of agree_t over the continuation
    cmp.steps[3].top_a              # [(" the", 0.41), (" a", 0.12), ...]
    Comparison.from_dict(json.loads(json.dumps(cmp.to_dict()))) == cmp    # what a worker sends back (JSON only)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from transformers import GenerationConfig


@dataclass(frozen=True)
class DecodeSettings:
    """One set of decoding settings for both models. `top_k=0` and `top_p=1.0` switch those filters off."""

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        problems = []
        if not 1 <= self.max_new_tokens <= 4096:
            problems.append(f"max_new_tokens {self.max_new_tokens} must be between 1 and 4096")
        if not self.temperature > 0:
            problems.append(f"temperature {self.temperature} must be > 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p {self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k {self.top_k} must be >= 0 (0 = off)")
        if problems:
            raise ValueError("invalid decoding settings: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DecodeSettings":
        """The settings `to_dict` wrote; unknown keys are ignored, missing ones take their defaults."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Generation:
    text: str                 # the continuation only, decoded
    token_ids: list[int]      # continuation ids
    tokens: list[str]         # each continuation token decoded on its own


@dataclass
class Step:
    """Teacher-forced view of one continuation position of the shared text."""

    position: int                         # index of the predicted token in the shared sequence
    token: str                            # the token that actually follows (model A's choice)
    agree: bool                           # top-1 of A == top-1 of B
    top_a: list[tuple[str, float]] = field(default_factory=list)
    top_b: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "Step":
        """JSON turns the (token, probability) pairs into lists; they come back as tuples."""
        return cls(position=int(data["position"]), token=data["token"], agree=bool(data["agree"]),
                   top_a=[(str(t), float(p)) for t, p in data["top_a"]],
                   top_b=[(str(t), float(p)) for t, p in data["top_b"]])


@dataclass
class Comparison:
    prompt: str
    prompt_tokens: int
    a: Generation
    b: Generation
    steps: list[Step]
    same_prefix: int          # leading continuation tokens that A and B generated identically

    @property
    def agreement_rate(self) -> float:
        return sum(s.agree for s in self.steps) / len(self.steps) if self.steps else float("nan")

    def to_dict(self) -> dict:
        """Plain JSON types only (str, int, float, bool, lists, dicts): what a Celery result backend carries."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Comparison":
        """The Comparison `to_dict` wrote, after a JSON round trip."""
        return cls(prompt=data["prompt"], prompt_tokens=int(data["prompt_tokens"]), a=Generation(**data["a"]),
                   b=Generation(**data["b"]), steps=[Step.from_dict(s) for s in data["steps"]],
                   same_prefix=int(data["same_prefix"]))


def _encode(tokenizer, prompt: str) -> torch.Tensor:
    if not prompt.strip():
        raise ValueError("the prompt is empty: type a few words for both models to continue")
    ids = tokenizer(prompt, return_tensors="pt").input_ids                       # [1, T]
    if ids.shape[1] == 0:
        raise ValueError("the prompt encodes to no tokens; type some words")
    return ids


def _generation_config(model, tokenizer, s: DecodeSettings) -> GenerationConfig:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample, pad_token_id=pad,
              eos_token_id=tokenizer.eos_token_id)
    if s.do_sample:
        kw.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    return GenerationConfig(**kw)


@torch.no_grad()            # not inference_mode: torchao's tensors cannot make the per-expert views it forbids
def generate(model, tokenizer, prompt: str, *, settings: DecodeSettings) -> Generation:
    """Continue `prompt` with `settings`; sampling is reseeded with `settings.seed` first, so it repeats."""
    ids = _encode(tokenizer, prompt)
    torch.manual_seed(settings.seed)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         generation_config=_generation_config(model, tokenizer, settings))
    new = out[0, ids.shape[1]:].tolist()                                          # [N]
    return Generation(text=tokenizer.decode(new, skip_special_tokens=True), token_ids=new,
                      tokens=[tokenizer.decode([t]) for t in new])


def _top(probs: torch.Tensor, tokenizer, k: int) -> list[tuple[str, float]]:
    p, idx = probs.topk(k)
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(p, idx)]


@torch.no_grad()
def teacher_forced_steps(model_a, model_b, tokenizer, ids: torch.Tensor, *, start: int, k: int = 5) -> list[Step]:
    """For every position t in [start, T) of `ids` [1, T]: top-1 agreement of A and B on x_<t, and both top-k."""
    probs_a = model_a(input_ids=ids).logits[0].float().softmax(-1)               # [T, V]
    probs_b = model_b(input_ids=ids).logits[0].float().softmax(-1)               # [T, V']
    if probs_a.shape[-1] != probs_b.shape[-1]:
        raise ValueError(f"the two models have different vocabularies ({probs_a.shape[-1]} vs "
                         f"{probs_b.shape[-1]} tokens), so their tokens cannot be compared")
    k = min(k, probs_a.shape[-1])
    steps = []
    for t in range(max(start, 1), ids.shape[1]):
        pa, pb = probs_a[t - 1], probs_b[t - 1]                                   # next-token dists given x_<t
        steps.append(Step(position=t, token=tokenizer.decode([int(ids[0, t])]),
                          agree=bool(pa.argmax() == pb.argmax()), top_a=_top(pa, tokenizer, k),
                          top_b=_top(pb, tokenizer, k)))
    return steps


def compare_models(model_a, model_b, tokenizer, prompt: str, *, settings: DecodeSettings, k: int = 5) -> Comparison:
    """Generate with both models (same settings, same seed), then score both on prompt + A's continuation. A
    torchao-quantized model runs the experts kernel its tensors support (`eager_experts_if_quantized_`)."""
    from compressor.quantize import eager_experts_if_quantized_
    for model in (model_a, model_b):
        eager_experts_if_quantized_(model)
    ids = _encode(tokenizer, prompt)
    gen_a = generate(model_a, tokenizer, prompt, settings=settings)
    gen_b = generate(model_b, tokenizer, prompt, settings=settings)
    shared = torch.cat([ids, torch.tensor([gen_a.token_ids], dtype=ids.dtype)], dim=1)  # [1, T + N]
    steps = teacher_forced_steps(model_a, model_b, tokenizer, shared, start=ids.shape[1]) if gen_a.token_ids else []
    same = 0
    for x, y in zip(gen_a.token_ids, gen_b.token_ids):
        if x != y:
            break
        same += 1
    return Comparison(prompt=prompt, prompt_tokens=ids.shape[1], a=gen_a, b=gen_b, steps=steps, same_prefix=same)
