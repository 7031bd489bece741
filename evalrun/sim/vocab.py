"""The simulator's filler vocabulary: the words a model "says" when no task is recognised,
with their tokens and bytes precomputed once (logprobs carry bytes)."""

from __future__ import annotations

import random

VOCAB = tuple(
    dict.fromkeys(  # distinct, so logprob alternatives never repeat a token
        [
            "the",
            "model",
            "answer",
            "result",
            "system",
            "value",
            "data",
            "process",
            "method",
            "approach",
            "question",
            "analysis",
            "example",
            "context",
            "problem",
            "solution",
            "step",
            "first",
            "second",
            "final",
            "number",
            "text",
            "output",
            "input",
            "consider",
            "note",
            "that",
            "this",
            "which",
            "result",
            "simple",
            "clear",
            "direct",
            "careful",
            "structure",
            "pattern",
            "general",
            "specific",
            "important",
            "relevant",
            "common",
            "typical",
            "likely",
            "possible",
            "overall",
            "several",
            "these",
            "those",
            "each",
            "other",
            "further",
            "given",
            "based",
            "using",
            "because",
            "while",
            "although",
            "therefore",
            "however",
            "thus",
            "also",
            "often",
            "usually",
            "mainly",
            "quickly",
            "simply",
            "clearly",
            "exactly",
            "roughly",
            "nearly",
            "time",
            "place",
            "part",
            "case",
            "point",
            "fact",
            "way",
            "form",
            "level",
            "order",
            "detail",
            "reason",
            "idea",
            "term",
            "factor",
            "evidence",
            "summary",
            "review",
            "response",
            "request",
            "section",
            "line",
            "list",
            "table",
            "record",
            "source",
            "field",
            "is",
            "are",
            "was",
            "be",
            "can",
            "will",
            "may",
            "should",
            "would",
            "could",
            "has",
            "have",
            "shows",
            "gives",
            "makes",
            "takes",
            "uses",
            "provides",
            "suggests",
            "indicates",
            "follows",
            "remains",
            "becomes",
            "depends",
            "includes",
            "requires",
            "means",
        ]
    )
)
# logprob alternatives are drawn from these; bytes precomputed for the hot path
VOCAB_TOKENS = tuple(" " + w for w in VOCAB)
VOCAB_BYTES = tuple(list(t.encode()) for t in VOCAB_TOKENS)


def filler_tokens(rng: random.Random, words: list[str]) -> list[str]:
    """A plain sentence or two of 8–60 tokens that echoes some prompt words."""
    n = rng.randint(8, 60)
    out: list[str] = []
    capital = True
    while len(out) < n - 1:
        if words and rng.random() < 0.2:
            w = words[rng.randrange(len(words))]
        else:
            w = VOCAB[rng.randrange(len(VOCAB))]
        if capital:
            w = w.capitalize()
            capital = False
        out.append(" " + w if out else w)
        r = rng.random()
        if len(out) < n - 2 and r < 0.14:
            out.append("," if r < 0.06 else ".")
            capital = r >= 0.06
    out.append(".")
    return out
