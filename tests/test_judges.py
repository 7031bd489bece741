"""Model judges: how evalrun asks and reads them, and the simulator as a judge, over HTTP."""

from __future__ import annotations

import math
from typing import Any

import aiohttp
import orjson
import pytest

from evalrun.analysis.judges import Judge, JudgeAnswer
from evalrun.config.scorers import LabelModel, PairwiseModel, ScoreModel
from evalrun.sim import SimOptions, start_simulator


def _row(content: str, question: str = "What is 2 + 3?", answer: int = 5, **extra: Any) -> dict[str, Any]:
    messages = orjson.dumps([{"role": "user", "content": question}]).decode()
    return {
        "request_id": "r1",
        "choice_index": 0,
        "status": "ok",
        "content": content,
        "messages": messages,
        "data_answer": str(answer),
        **extra,
    }


def _answer(content: str | None, ok: bool = True, top: tuple[tuple[str, float], ...] = ()) -> JudgeAnswer:
    return JudgeAnswer(ok, content, top, "judge-model", 0.001, 100, None if ok else "server_error: boom")


LABEL = LabelModel(type="label_model", model="m", rubric="factuality", reference="{answer}")
GEVAL = LabelModel(type="label_model", model="m", rubric="factuality", reference="{answer}", use_logprobs=True)
SCORE = ScoreModel(type="score_model", model="m", rubric="factuality", reference="{answer}", pass_at=7)
SCORE100 = ScoreModel(
    type="score_model", model="m", rubric="factuality", reference="{answer}", range=(0, 100), pass_at=50
)
PAIR = PairwiseModel(
    type="pairwise_model", model="m", rubric="factuality", reference="{answer}", baseline={"model": "base"}
)


@pytest.mark.parametrize(
    ("cfg", "answers", "score", "passed", "label", "error"),
    [
        (LABEL, ["CORRECT\nIt matches."], 1.0, True, "CORRECT", None),
        (LABEL, ["**Incorrect.**\nNo."], 0.0, False, "INCORRECT", None),
        (LABEL, ["\n  correct: yes"], 1.0, True, "CORRECT", None),
        (LABEL, ["Maybe?"], None, None, None, "judge_unparseable"),
        (LABEL, ["Correctness: INCORRECT"], 0.0, False, "INCORRECT", None),  # not the key's CORRECT
        (LABEL, ["CORRECT or INCORRECT"], None, None, None, "judge_conflicting"),
        (SCORE100, ["7,5"], None, None, None, "judge_locale_number"),  # not 75
        (SCORE100, ["75 %"], 0.75, True, "75", None),
        (SCORE, ["8\nGood."], 7 / 9, True, "8", None),
        (SCORE, ["6.5 out of 10"], 5.5 / 9, False, "6.5", None),
        (SCORE, ["11"], None, None, None, "expected 1–10"),
        (PAIR, ["A\n", "B\n"], 1.0, True, "win", None),  # this cell won in both orders
        (PAIR, ["B\n", "A\n"], 0.0, False, "loss", None),
        (PAIR, ["A\n", "A\n"], 0.5, False, "tie", None),  # position bias: the orders disagree
        (PAIR, ["TIE", "TIE"], 0.5, False, "tie", None),
        (PAIR, ["A", "C"], None, None, None, "expected one of A, B, TIE"),
    ],
)
def test_verdicts_are_read_from_the_first_line(
    cfg: Any, answers: list[str], score: float | None, passed: bool | None, label: str | None, error: str | None
) -> None:
    out = Judge(cfg, "sim").verdict([_answer(a) for a in answers])
    assert out["score"] == (pytest.approx(score) if score is not None else None)
    assert out["pass"] is passed and out["label"] == label
    assert (error is None and "error" not in out) or (error is not None and error in out["error"])


def test_a_failed_or_missing_judge_leaves_the_score_null_with_its_error() -> None:
    judge = Judge(LABEL, "sim")
    failed = judge.verdict([_answer(None, ok=False)])
    assert failed["score"] is None and failed["pass"] is None and "server_error: boom" in failed["error"]
    missing = judge.verdict([None])
    assert missing["score"] is None and "not judged" in missing["error"]


def test_g_eval_weights_the_labels_by_first_token_probability() -> None:
    top = (("CORRECT", math.log(0.6)), ("INCORRECT", math.log(0.3)), ("maybe", math.log(0.1)))
    out = Judge(GEVAL, "sim").verdict([_answer("CORRECT\nfine", top=top)])
    assert out["score"] == pytest.approx(0.6 / 0.9) and out["label"] == "CORRECT" and out["pass"] is True
    # without logprobs it is the label's own score
    assert Judge(LABEL, "sim").verdict([_answer("CORRECT", top=top)])["score"] == 1.0


def test_a_changed_rubric_is_a_new_judge_request_and_the_same_one_is_not() -> None:
    row = _row("The answer is 5.")
    ids = [jid for jid, _ in Judge(LABEL, "sim").questions(row, None)]
    assert ids == [jid for jid, _ in Judge(LABEL, "sim").questions(row, None)]  # stable
    other = LabelModel(type="label_model", model="m", rubric="closed_qa", reference="{answer}")
    assert ids != [jid for jid, _ in Judge(other, "sim").questions(row, None)]
    assert len(Judge(PAIR, "sim").questions(row, "The answer is 4.")) == 2  # both orders
    assert Judge(PAIR, "sim").questions(row, None) == []  # no baseline answer: nothing to ask


async def _ask(session: aiohttp.ClientSession, url: str, model: str, messages: list[Any]) -> dict[str, Any]:
    body = {"model": model, "messages": messages, "temperature": 0.0, "logprobs": True, "top_logprobs": 5}
    async with session.post(url + "/chat/completions", json=body) as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_the_simulator_judges_like_its_model_would() -> None:
    """Right answers are graded right, wrong ones wrong, with the judge model's error rate."""
    sim = await start_simulator(SimOptions(latency_scale=0))
    try:
        async with aiohttp.ClientSession() as session:
            accuracy = {}
            for model in ("gemini-3.1-pro-preview", "gemini-2.5-flash-lite"):
                agree = 0
                for i in range(120):
                    truth = i % 2 == 0
                    row = _row(f"It is {i + 5 if truth else i + 6}.", f"What is {i} + 5?", i + 5)
                    ((_, messages),) = Judge(LABEL, "sim").questions(row, None)
                    body = await _ask(session, sim.base_url, model, messages)
                    first = body["choices"][0]["message"]["content"].splitlines()[0]
                    assert first in ("CORRECT", "INCORRECT")
                    agree += (first == "CORRECT") == truth
                    top = body["choices"][0]["logprobs"]["content"][0]
                    assert top["token"] == first and {t["token"] for t in top["top_logprobs"]} >= {first}
                accuracy[model] = agree / 120
            # errors depend on the judge's skill: the strong judge is right more often
            assert accuracy["gemini-3.1-pro-preview"] > 0.85 > accuracy["gemini-2.5-flash-lite"] > 0.5
    finally:
        await sim.close()


@pytest.mark.asyncio
async def test_swapping_the_two_answers_mirrors_the_simulators_pairwise_verdict() -> None:
    sim = await start_simulator(SimOptions(latency_scale=0))
    mirror = {"A": "B", "B": "A", "TIE": "TIE"}
    seen: set[str] = set()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(60):
                good, bad = f"It is {i + 5}.", f"It is {i + 7}."
                mine, base = (good, bad) if i % 3 else (bad, good) if i % 2 else (good, f"{i + 5} it is.")
                row = _row(mine, f"What is {i} + 5?", i + 5)
                first, second = Judge(PAIR, "sim").questions(row, base)
                picks = []
                for _, messages in (first, second):
                    body = await _ask(session, sim.base_url, "gemini-2.5-flash-lite", messages)
                    picks.append(body["choices"][0]["message"]["content"].splitlines()[0])
                assert picks[1] == mirror[picks[0]], (i, picks)
                seen.add(picks[0])
    finally:
        await sim.close()
    assert seen == {"A", "B", "TIE"}  # wins, losses and ties all occurred, mistakes included
