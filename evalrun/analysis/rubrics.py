"""evalrun's ready-made grading rubrics and the one layout every judge prompt has.

A judge prompt is: the rubric's instructions, then the material in bracketed sections —
`[Question]`, `[Reference]` (when there is one), `[Answer]` or `[Answer A]`/`[Answer B]` —
then one line saying how to reply, with the verdict alone on the first line. Keeping the
verdict first makes it cheap to parse and lets a label judge read its confidence from the
first token's logprobs. The simulator grades prompts of this layout (evalrun/sim/judge.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rubric:
    """Instructions, and the labels (best first) a label judge uses when none are configured."""

    instructions: str
    labels: tuple[tuple[str, float], ...]


RUBRICS: dict[str, Rubric] = {
    # after autoevals' Factuality and inspect_ai's model_graded_fact, reworded for a short verdict
    "factuality": Rubric(
        "You are comparing a submitted answer with an expert's reference answer to a question. "
        "Judge only whether the facts in the answer agree with the reference; ignore style, length "
        "and wording. An answer that adds harmless detail but keeps the reference's facts is correct.",
        (("CORRECT", 1.0), ("INCORRECT", 0.0)),
    ),
    # after OpenAI's closed-QA grader: the answer must be right and supported by the question
    "closed_qa": Rubric(
        "You are checking an answer to a question that can be answered from the question itself and "
        "the reference. The answer is acceptable only if it is correct and says nothing that the "
        "question and the reference do not support.",
        (("YES", 1.0), ("NO", 0.0)),
    ),
    "instructions": Rubric(
        "You are checking whether a response follows the instructions in the request it answers: "
        "format, length, language, what to include and what to leave out. Do not judge whether it "
        "is factually right.",
        (("FOLLOWS", 1.0), ("PARTLY", 0.5), ("IGNORES", 0.0)),
    ),
}

DEFAULT_LABELS = (("PASS", 1.0), ("FAIL", 0.0))  # a label judge with its own instructions and no labels


def sections(question: str, reference: str | None, answers: dict[str, str]) -> str:
    """The material, in the bracketed layout."""
    parts = [f"[Question]\n{question.strip()}"]
    if reference is not None:
        parts.append(f"[Reference]\n{reference.strip()}")
    parts += [f"[{name}]\n{text.strip()}" for name, text in answers.items()]
    return "\n\n".join(parts)


def reply_labels(labels: list[str]) -> str:
    return f"Reply with one of: {', '.join(labels)} (best first), alone on the first line; then explain briefly."


def reply_range(lo: float, hi: float) -> str:
    return f"Reply with a number from {lo:g} to {hi:g}, alone on the first line; then explain briefly."


REPLY_PAIRWISE = "Reply with A, B or TIE, alone on the first line, for the better answer; then explain briefly."
