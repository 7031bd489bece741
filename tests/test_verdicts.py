"""Reading judges' answers as a reviewer would: hostile first lines, locale numbers and broken
logprobs, as a table; then the same shapes answered by a judge server over HTTP, end to end."""

from __future__ import annotations

import math
import re
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import Reply, base_config, completion, write_config

from evalrun.analysis.judges import Judge, JudgeAnswer
from evalrun.analysis.verdicts import label_weights, read_label, read_score
from evalrun.config.scorers import LabelModel

FACTS = ("CORRECT", "INCORRECT")


@pytest.mark.parametrize(
    ("answer", "labels", "value", "problem"),
    [
        ("CORRECT\nIt matches.", FACTS, "CORRECT", None),
        ("Correctness: INCORRECT", FACTS, "INCORRECT", None),  # the key's word is not the verdict
        ("Verdict: **correct**\nfine", FACTS, "CORRECT", None),
        ("**INCORRECT.**", FACTS, "INCORRECT", None),
        ("\n\n  > incorrect", FACTS, "INCORRECT", None),
        ("correct: yes", FACTS, "CORRECT", None),
        ("CORRECTLY answered", FACTS, None, "judge_unparseable"),
        ("CORRECTLY", FACTS, None, "judge_unparseable"),  # a word that starts like a label
        ("NOT CORRECT", FACTS, None, "judge_unparseable"),
        ("The answer is INCORRECT", FACTS, None, "judge_unparseable"),
        ("CORRECT or INCORRECT", FACTS, None, "judge_conflicting"),
        ("Correct: INCORRECT", FACTS, None, "judge_conflicting"),
        ("", FACTS, None, "judge_unparseable"),
        ("PARTLY FOLLOWS", ("FOLLOWS", "PARTLY", "IGNORES"), None, "judge_conflicting"),
        ("Mostly correct.", ("CORRECT", "MOSTLY CORRECT", "WRONG"), "MOSTLY CORRECT", None),
        ("B\nAnswer B is better.", ("A", "B", "TIE"), "B", None),
        ("A tie", ("A", "B", "TIE"), None, "judge_conflicting"),
        ("Answer A", ("A", "B", "TIE"), None, "judge_unparseable"),
    ],
)
def test_a_label_is_read_where_the_rubric_asks_for_it(
    answer: str, labels: tuple[str, ...], value: str | None, problem: str | None
) -> None:
    r = read_label(answer, labels)
    assert r.value == value
    assert (r.problem is None) if problem is None else (r.problem or "").startswith(problem), r.problem


@pytest.mark.parametrize(
    ("answer", "scale", "value", "problem"),
    [
        ("8\nGood.", (1, 10), 8.0, None),
        ("Score: 8", (1, 10), 8.0, None),
        ("6.5 out of 10", (1, 10), 6.5, None),
        ("7.5/10", (1, 10), 7.5, None),
        ("**9**.", (1, 10), 9.0, None),
        ("75 %", (0, 100), 75.0, None),
        ("75%", (1, 10), None, "judge_unparseable"),  # a percentage is not a 1–10 grade
        ("7.5/5", (1, 10), None, "judge_unparseable"),  # another scale
        ("7,5", (0, 100), None, "judge_locale_number"),  # not 75
        ("1.234,5", (0, 2000), None, "judge_locale_number"),
        ("1,234.5", (0, 2000), None, "judge_locale_number"),
        ("1.2.3", (0, 100), None, "judge_unparseable"),
        ("8 or 9", (1, 10), None, "judge_conflicting"),
        ("8-9", (1, 10), None, "judge_conflicting"),
        ("8th", (1, 10), None, "judge_unparseable"),
        ("1e1", (1, 10), None, "judge_unparseable"),
        ("nan", (1, 10), None, "judge_unparseable"),
        ("inf", (1, 10), None, "judge_unparseable"),
        ("11", (1, 10), None, "judge_out_of_range"),
        ("-1", (0, 100), None, "judge_out_of_range"),
        ("Great answer", (1, 10), None, "judge_unparseable"),
    ],
)
def test_a_score_is_a_plain_number_in_the_range(
    answer: str, scale: tuple[float, float], value: float | None, problem: str | None
) -> None:
    r = read_score(answer, *scale)
    assert r.value == value
    assert (r.problem is None) if problem is None else (r.problem or "").startswith(problem), r.problem


@pytest.mark.parametrize(
    ("logprob", "weight", "problem"),
    [
        (math.log(0.6), 0.6, None),
        (1e-9, 1.0, None),  # rounding above 0: probability 1
        (-math.inf, 0.0, None),
        (1000.0, None, "judge_bad_logprobs"),  # exp() would overflow
        (0.5, None, "judge_bad_logprobs"),
        (math.nan, None, "judge_bad_logprobs"),
        (math.inf, None, "judge_bad_logprobs"),
    ],
)
def test_judge_logprobs_must_be_log_probabilities(logprob: float, weight: float | None, problem: str | None) -> None:
    weights, why = label_weights((("CORRECT", logprob), ("maybe", 5.0)), FACTS)  # a non-label: not read
    if problem is None:
        assert why is None and weights["CORRECT"] == pytest.approx(weight)
    else:
        assert weights == {} and why is not None and why.startswith(problem)


def test_a_bad_logprob_leaves_the_row_ungraded_with_its_reason() -> None:
    cfg = LabelModel(type="label_model", model="m", rubric="factuality", reference="{answer}", use_logprobs=True)
    answer = JudgeAnswer(True, "CORRECT\nfine", (("CORRECT", 1000.0),), "m", 0.001, 10, None)
    out = Judge(cfg, "sim").verdict([answer])
    assert out["score"] is None and out["pass"] is None and out["error"].startswith("judge_bad_logprobs")


# ---------------------------------------------------------------------------- over HTTP

# row i of the dataset → what the judge server answers about it (label judge, score judge 0–100)
SHAPES = [
    ("Correctness: INCORRECT", "7,5"),
    ("CORRECT or INCORRECT", "75 %"),
    ("CORRECT", "7.5"),
    ("CORRECT", "1.234,5"),  # and a first-token logprob of +1000 for this row's label
]


def _judge_server(payload: dict[str, Any]) -> Reply:
    """Answers an experiment request with a short answer, a judge request with SHAPES."""
    text = str(payload["messages"][-1]["content"])
    if "[Answer]" not in text:
        return Reply(json=completion("It is 7."))
    i = int(re.search(r"question (\d+)", text).group(1))  # type: ignore[union-attr]
    label, score = SHAPES[i]
    if "Reply with a number" in text:
        return Reply(json=completion(score + "\nbecause"))
    lp = 1000.0 if i == 3 else math.log(0.9)
    top = [{"token": "CORRECT", "logprob": lp, "bytes": None}, {"token": "INCORRECT", "logprob": -3.0, "bytes": None}]
    first = {"token": label.split()[0], "logprob": lp, "bytes": None, "top_logprobs": top}
    return Reply(json=completion(label + "\nbecause", logprobs={"content": [first]}))


def test_hostile_judge_answers_over_http_are_graded_or_ungraded_with_a_reason(tmp_path, scripted, cli) -> None:
    server = scripted(default=_judge_server)
    ds = tmp_path / "rows.jsonl"
    ds.write_text("".join(f'{{"id": "r{i}", "question": "question {i}", "answer": 7}}\n' for i in range(len(SHAPES))))
    cfg = base_config(tmp_path, ds, server.base_url)
    judge = {"model": "judge", "rubric": "factuality", "reference": "{answer}"}
    cfg["scorers"] = [
        {"name": "fact", "type": "label_model", "use_logprobs": True, **judge},
        {"name": "grade", "type": "score_model", "range": [0, 100], "pass_at": 50, **judge},
    ]
    config = write_config(tmp_path, cfg)
    r = cli("run", config, "--no-progress")
    assert r.code == 0, r.err
    rows = sorted(pq.read_table(r.run_dir / "results.parquet").to_pylist(), key=lambda row: row["data_id"])
    col = lambda name: [row[name] for row in rows]  # noqa: E731
    assert col("judge_label_fact") == ["INCORRECT", None, "CORRECT", None]
    assert col("pass_fact") == [False, None, True, None]
    errors = col("judge_error_fact")
    assert errors[0] is None and errors[1].startswith("judge_conflicting") and errors[2] is None
    assert errors[3].startswith("judge_bad_logprobs")
    assert col("score_grade") == [None, 0.75, 0.075, None]  # "7,5" is not 75
    errors = col("judge_error_grade")
    assert errors[0].startswith("judge_locale_number") and errors[3].startswith("judge_locale_number")
    sent = len(server.requests)
    again = cli("run", "--resume", r.run_dir, "--no-progress")  # answered: nothing is asked again
    assert again.code == 0, again.err
    assert len(server.requests) == sent and "nothing to resume" in again.err
