"""Scorers that ask a model: label, score and pairwise judges.

The analysis stage decides *what* to ask and *what the answers mean*; the run stage sends the
questions. After the experiment's own requests, the runner asks `Judges.requests()` for the
judge requests still unanswered and sends them through the same pool, limiter, retries and
cost accounting into `judge_journal.jsonl`. While results.parquet is written, `Judges.apply`
turns each row's judge answers into its score_<name>/pass_<name> and judge_* columns.

A judge request's id is a digest of everything it sends (rubric, answer, judge model and
parameters) and of the row it grades, so a killed run resumes without asking twice, and a
changed rubric asks again while the experiment's own requests are never re-sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson

from evalrun.analysis.rubrics import DEFAULT_LABELS, REPLY_PAIRWISE, RUBRICS, reply_labels, reply_range, sections
from evalrun.analysis.verdicts import label_weights, read_label, read_score
from evalrun.config.params import PARAM_COLUMN, clean_params
from evalrun.config.scorers import JudgeConfig, LabelModel, PairwiseModel, ScoreModel
from evalrun.config.templates import fill
from evalrun.errors import ConfigError
from evalrun.run.records import Cell, Logprobs, Message, RequestSpec
from evalrun.run.store import DATA_PREFIX, JUDGE_JOURNAL, read_journal

PICKS = ("A", "B", "TIE")  # what a pairwise judge answers (rubrics.REPLY_PAIRWISE)
REASONING_CHARS = 2000  # of a judge's explanation kept in the report
CHARS_PER_TOKEN = 4  # a rough prompt-size estimate for the TPM reservation; corrected from usage
# (column suffix, Arrow kind) of what every judge adds beside score_<name>/pass_<name>
JUDGE_COLUMNS = (
    ("label", "str"),
    ("reasoning", "str"),
    ("model", "str"),
    ("request_id", "str"),
    ("error", "str"),
    ("cost", "float"),
    ("tokens", "int"),
)


@dataclass(frozen=True, slots=True)
class JudgeAnswer:
    """What a judge request came back with (the latest journal entry for its id)."""

    ok: bool
    content: str | None
    first_token: tuple[tuple[str, float], ...]  # the first token's top alternatives, with logprobs
    model: str | None
    cost: float | None
    tokens: int | None
    error: str | None


def _digest(*parts: object) -> str:
    return blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=10).hexdigest()


def _question(messages_json: str | None) -> str:
    """The last user message of the graded request, as text."""
    messages = orjson.loads(messages_json) if messages_json else []
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _response(row: dict[str, Any]) -> str:
    return str(row.get("content") or row.get("tool_calls") or "")


def _data(row: dict[str, Any]) -> dict[str, Any]:
    return {k[len(DATA_PREFIX) :]: v for k, v in row.items() if k.startswith(DATA_PREFIX)}


class Judge:
    """One judge scorer, compiled: how to ask about a row and how to read the answer."""

    def __init__(self, cfg: JudgeConfig, provider: str) -> None:
        self.cfg = cfg
        self.name = cfg.name or cfg.type
        rubric = RUBRICS.get(cfg.rubric)
        self.instructions = rubric.instructions if rubric else cfg.rubric
        params = clean_params(cfg.params)
        self.labels: list[tuple[str, float]] = []
        if isinstance(cfg, LabelModel):
            given = list(cfg.labels.items()) if cfg.labels else None
            self.labels = given or list(rubric.labels if rubric else DEFAULT_LABELS)
            self.labels.sort(key=lambda kv: -kv[1])  # best first, as the reply line says
            self.passing = set(cfg.passing or [lbl for lbl, s in self.labels if s >= cfg.threshold])
            self.reply = reply_labels([lbl for lbl, _ in self.labels])
            if cfg.use_logprobs:
                params = {**params, "logprobs": True, "top_logprobs": max(5, len(self.labels))}
        elif isinstance(cfg, ScoreModel):
            self.reply = reply_range(*cfg.range)
        else:
            self.reply = REPLY_PAIRWISE
        self.cell = Cell(
            f"judge-{self.name}-{_digest(provider, cfg.model, params)}",
            provider,
            cfg.model,
            f"judge:{self.name}",
            params,
        )

    # ---- asking ------------------------------------------------------------------------------

    def _messages(self, row: dict[str, Any], answers: dict[str, str]) -> list[Message]:
        data = _data(row)
        reference = fill(self.cfg.reference, data) if self.cfg.reference is not None else None
        text = "\n\n".join(
            [fill(self.instructions, data), sections(_question(row.get("messages")), reference, answers), self.reply]
        )
        return [{"role": "user", "content": text}]

    def questions(self, row: dict[str, Any], baseline: str | None) -> list[tuple[str, list[Message]]]:
        """(judge request id, messages) for one report row: one question, or two orders."""
        source = (row["request_id"], row.get("choice_index") or 0)
        if isinstance(self.cfg, PairwiseModel):
            if baseline is None:
                return []
            mine = _response(row)
            orders = ({"Answer A": mine, "Answer B": baseline}, {"Answer A": baseline, "Answer B": mine})
            asked = [self._messages(row, answers) for answers in orders]
        else:
            asked = [self._messages(row, {"Answer": _response(row)})]
        return [(f"j{_digest(self.name, self.cell.cell_id, source, i, m)}", m) for i, m in enumerate(asked)]

    # ---- reading -----------------------------------------------------------------------------

    def _label(self, a: JudgeAnswer) -> tuple[str | None, float | None, str | None]:
        """(label, score, problem): the first line's label (verdicts.read_label); with
        use_logprobs, the probability-weighted score over the labels the first token's
        alternatives name (G-Eval)."""
        names = [lbl for lbl, _ in self.labels]
        reading = read_label(a.content, names)
        if reading.problem is not None:
            return None, None, reading.problem
        label = str(reading.value)
        scores = dict(self.labels)
        score = scores[label]
        if isinstance(self.cfg, LabelModel) and self.cfg.use_logprobs and a.first_token:
            weights, problem = label_weights(a.first_token, names)
            if problem is not None:
                return None, None, problem
            total = sum(weights.values())
            if total > 0:
                score = sum(w * scores[k] for k, w in weights.items()) / total
        return label, score, None

    def verdict(self, answers: Sequence[JudgeAnswer | None]) -> dict[str, Any]:
        """score, pass, label and the error for one row from its judge answers."""
        missing = [a for a in answers if a is None]
        failed = [a for a in answers if a is not None and not a.ok]
        out: dict[str, Any] = {"score": None, "pass": None, "label": None}
        if not answers or missing:
            out["error"] = "not judged (the run stopped before judging; --resume judges it)"
            return out
        if failed:
            out["error"] = "; ".join(a.error or "judge request failed" for a in failed)
            return out
        done = [a for a in answers if a is not None]
        if isinstance(self.cfg, PairwiseModel):
            readings = [read_label(a.content, PICKS) for a in done]
            problems = [r.problem for r in readings if r.problem is not None]
            if problems:
                out["error"] = "; ".join(problems)
                return out
            picks = [r.value for r in readings]
            mine = [picks[0] == "A", picks[1] == "B"]  # this cell is A in the first order, B in the second
            theirs = [picks[0] == "B", picks[1] == "A"]
            outcome = "win" if all(mine) else "loss" if all(theirs) else "tie"
            out.update(score={"win": 1.0, "tie": 0.5, "loss": 0.0}[outcome], label=outcome)
            out["pass"] = outcome == "win"
            return out
        a = done[0]
        if isinstance(self.cfg, ScoreModel):
            lo, hi = self.cfg.range
            reading = read_score(a.content, lo, hi)
            if not isinstance(reading.value, float):
                out["error"] = reading.problem
                return out
            grade = reading.value
            out.update(score=(grade - lo) / (hi - lo), label=f"{grade:g}", **{"pass": grade >= self.cfg.pass_at})
            return out
        label, score, problem = self._label(a)
        if label is None or score is None:
            out["error"] = problem
            return out
        out.update(score=score, label=label, **{"pass": label in self.passing})
        return out


class Judges:
    """The experiment's judge scorers: the requests still to send, and their columns."""

    def __init__(self, judges: list[Judge]) -> None:
        self.judges = judges
        self._answers: dict[str, JudgeAnswer] = {}
        self._baselines: dict[tuple[Any, ...], str] = {}

    def __bool__(self) -> bool:
        return bool(self.judges)

    @property
    def providers(self) -> set[str]:
        return {j.cell.provider for j in self.judges}

    def columns(self) -> list[tuple[str, str]]:
        """(column, Arrow kind) beyond score_/pass_, for the results schema."""
        return [(f"judge_{suffix}_{j.name}", kind) for j in self.judges for suffix, kind in JUDGE_COLUMNS]

    # ---- the baseline of a pairwise judge -----------------------------------------------------

    @staticmethod
    def _params_key(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(c) for c in PARAM_COLUMN.values())

    def _item(self, judge: Judge, row: dict[str, Any], prompt: str | None) -> tuple[Any, ...]:
        item = (row.get("row_id"), row.get("repeat"), row.get("choice_index") or 0)
        return (judge.name, prompt or row.get("prompt_id"), self._params_key(row), *item)

    def _is_baseline(self, judge: Judge, row: dict[str, Any]) -> bool:
        b = judge.cfg.baseline if isinstance(judge.cfg, PairwiseModel) else None
        return b is not None and row.get("model") == b.model and (b.prompt is None or row.get("prompt_id") == b.prompt)

    def _baseline_of(self, judge: Judge, row: dict[str, Any]) -> str | None:
        if not isinstance(judge.cfg, PairwiseModel) or self._is_baseline(judge, row):
            return None
        return self._baselines.get(self._item(judge, row, judge.cfg.baseline.prompt))

    def load(self, run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
        """Read the judge journal, and the baseline answers from the run's rows."""
        for entry in read_journal(run_dir / JUDGE_JOURNAL):
            row = entry["rows"][0] if entry.get("rows") else {}
            lp: Logprobs | None = row.get("logprobs")
            top = lp.alternatives(0) if lp is not None and lp.token else []
            known = self._answers.get(entry["id"])
            if known is not None and known.ok and entry["status"] != "ok":
                continue  # a paid verdict stands (a merge may list a shard's earlier failure after it)
            self._answers[entry["id"]] = JudgeAnswer(
                ok=entry["status"] == "ok",
                content=row.get("content"),
                first_token=tuple((tok or "", -math.inf if p is None else float(p)) for tok, p in top),
                model=row.get("response_model") or row.get("model"),
                cost=row.get("cost_total"),
                tokens=row.get("total_tokens"),
                error=None if entry["status"] == "ok" else f"{row.get('error_type')}: {row.get('error_message')}",
            )
        pairwise = [j for j in self.judges if isinstance(j.cfg, PairwiseModel)]
        if pairwise:
            for row in rows:
                for j in pairwise:
                    if row.get("status") == "ok" and self._is_baseline(j, row):
                        self._baselines[self._item(j, row, row.get("prompt_id"))] = _response(row)

    # ---- what to send -------------------------------------------------------------------------

    def requests(self, rows: Iterable[dict[str, Any]], lane: tuple[str, str] | None = None) -> Iterator[RequestSpec]:
        """The judge requests for these report rows that have no answer yet (errors are asked
        again: a judge that failed leaves a null score, and a resume should fill it); only the
        judges of one provider × model `lane` when given."""
        judges = [j for j in self.judges if lane is None or (j.cell.provider, j.cell.model) == lane]
        for row in rows:
            if row.get("status") != "ok":
                continue
            for j in judges:
                for jid, messages in j.questions(row, self._baseline_of(j, row)):
                    known = self._answers.get(jid)
                    if known is not None and known.ok:
                        continue
                    text = str(messages[0]["content"])
                    yield RequestSpec(
                        jid, j.cell, str(row["request_id"]), 0, messages, {}, len(text) // CHARS_PER_TOKEN
                    )

    # ---- what the answers mean ----------------------------------------------------------------

    def apply(self, rows: list[dict[str, Any]]) -> None:
        """Fill every judge's columns on these report rows (null on error rows)."""
        for row in rows:
            for j in self.judges:
                cols: dict[str, Any] = {}
                if row.get("status") == "ok":
                    asked = j.questions(row, self._baseline_of(j, row))
                    answers = [self._answers.get(jid) for jid, _ in asked]
                    if not asked:
                        cols = {"score": None, "pass": None, "label": None}
                        if not self._is_baseline(j, row):
                            cols["error"] = "no baseline answer for this item"
                    else:
                        cols = j.verdict(answers)
                    done = [a for a in answers if a is not None]
                    reasoning = "\n".join((a.content or "").strip() for a in done)
                    costs = [a.cost for a in done if a.cost is not None]
                    tokens = [a.tokens for a in done if a.tokens is not None]
                    cols |= {
                        "reasoning": reasoning[:REASONING_CHARS] or None,
                        "model": next((a.model for a in done if a.model), None),
                        "request_id": ",".join(jid for jid, _ in asked) or None,
                        "cost": sum(costs) if costs else None,
                        "tokens": sum(tokens) if tokens else None,
                    }
                row[f"score_{j.name}"] = cols.get("score")
                row[f"pass_{j.name}"] = cols.get("pass")
                for suffix, _ in JUDGE_COLUMNS:
                    if suffix != "request_id" or "request_id" in cols:
                        row[f"judge_{suffix}_{j.name}"] = cols.get(suffix)


def compile_judges(configs: list[Any], provider_of: Callable[[int], str], model_names: list[str], where: str) -> Judges:
    """The judge scorers among `configs`, checked against the experiment (baseline models)."""
    judges = []
    for i, cfg in enumerate(configs):
        if not isinstance(cfg, LabelModel | ScoreModel | PairwiseModel):
            continue
        if isinstance(cfg, PairwiseModel) and cfg.baseline.model not in model_names:
            raise ConfigError(
                f"{where}[{i}].baseline.model: {cfg.baseline.model!r} is not in models: ({', '.join(model_names)})"
            )
        judges.append(Judge(cfg, provider_of(i)))  # the judge's own provider, else the default
    return Judges(judges)
