"""Deterministic answers: a pure function of (seed, request body, repeat, choice index).

The request is hashed once (blake2b of canonical JSON) and each choice gets its own
`random.Random`; nothing reads the clock or global state, so the same request gives
byte-identical content, logprobs and usage in any process. Models have a *skill*: the
chance of answering a recognised task (arithmetic, multiple choice) correctly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from hashlib import blake2b

import orjson

from evalrun.sim.judge import Verdict, find_judge, judge_verdict
from evalrun.sim.output import fit_budget, split_slot, tool_call_for
from evalrun.sim.profiles import (
    EFFORT_BONUS,
    GUESS_CUE,
    GUESS_PENALTY,
    P_MAX,
    P_MIN,
    REASONING_TOKENS,
    TEMPERATURE_PENALTY,
    TOP_P_BONUS,
    ModelProfile,
    profile_for,
)
from evalrun.sim.structured import ANSWER_SLOT, SchemaContext, instance_for_schema, pick_tool
from evalrun.sim.tasks import (
    Arithmetic,
    MultipleChoice,
    Number,
    find_arithmetic,
    find_multiple_choice,
    format_number,
    option_number,
    prompt_words,
    proper_nouns,
    wants_bare_number,
)
from evalrun.sim.tokens import PromptCount, count_prompt, message_text, tokenize
from evalrun.sim.vocab import filler_tokens
from evalrun.sim.wire import ChatRequest, ToolCall

__all__ = ["Answer", "ChoiceAnswer", "Dist", "ModelProfile", "answer_request", "correct_choices", "profile_for"]


CREATED_BASE = 1_760_000_000
# Transport, reporting and truncation parameters change how much of the sample is returned
# and how, never what is sampled: a max_tokens cut is a prefix of the uncut answer.
_NOT_IN_KEY = frozenset(
    {"stream", "stream_options", "logprobs", "top_logprobs", "stop", "max_tokens", "max_completion_tokens"}
)
_WRONG_OFFSETS = (1, 1, 1, 2, 2, 3, 4, 5, 10)
_NEIGHBOURS = (1, -1, 2, -2, 10, -10, 3, -3, 5, -5)


@dataclass(frozen=True, slots=True)
class Dist:
    """The reported next-token distribution at an answer token: sampled p and rivals."""

    p: float
    alts: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class ChoiceAnswer:
    """One generated choice, before serialisation."""

    index: int
    tokens: list[str]  # visible content tokens; they concatenate to `content`
    dists: dict[int, Dist]  # explicit distributions at answer-token positions
    content: str | None
    tool_call: ToolCall | None
    reasoning: int
    visible: int  # completion tokens that are not reasoning
    finish_reason: str
    lp_seed: int  # seeds logprob reporting separately from sampling


@dataclass(slots=True)
class Answer:
    """A whole completion: every choice plus prompt accounting."""

    id: str
    created: int
    model: str
    choices: list[ChoiceAnswer]
    prompt: PromptCount

    @property
    def completion_tokens(self) -> int:
        return sum(c.reasoning + c.visible for c in self.choices)

    @property
    def total_tokens(self) -> int:
        return self.prompt.total + self.completion_tokens


def _u(digest: bytes) -> float:
    return int.from_bytes(digest[:7], "big") / 2.0**56


def _effort(body: ChatRequest, profile: ModelProfile) -> str:
    effort = body.get("reasoning_effort") or profile.default_effort
    # The pro models always think; "none" is accepted and treated as the lowest level.
    return "low" if effort == "none" and not profile.can_disable_thinking else effort


def _p_correct(body: ChatRequest, profile: ModelProfile, effort: str) -> float:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    p = (
        profile.skill
        - TEMPERATURE_PENALTY * (1.0 if temperature is None else temperature)
        + EFFORT_BONUS[effort]
        + TOP_P_BONUS * (1.0 - (1.0 if top_p is None else top_p))
    )
    if any(
        GUESS_CUE.search(message_text(m.get("content")))
        for m in body["messages"]
        if m.get("role") in ("system", "user")
    ):
        p -= GUESS_PENALTY
    return min(P_MAX, max(P_MIN, p))


def _with_p(tok: str, ps: float, rivals: list[str], weights: list[float]) -> Dist:
    """Spread (1 - ps) over rivals by weight, keeping 5 % unlisted so sums stay < 1."""
    share = (1.0 - ps) * 0.95
    total = sum(weights) or 1.0
    seen = {tok}
    alts = []
    for r, w in zip(rivals, weights):
        if r not in seen:
            seen.add(r)
            alts.append((r, share * w / total))
    return Dist(ps, tuple(alts))


def _number_dist(sampled: Number, truth: Number, correct: bool, p: float, rng: random.Random, prefix: str) -> Dist:
    if correct:
        ps = min(0.999, max(0.5, p + 0.1 * (rng.random() - 0.3)))
        rivals = [sampled + k for k in _NEIGHBOURS[:6]]
        weights = [0.5, 0.25, 0.12, 0.06, 0.04, 0.03]
    else:
        ps = 0.25 + 0.3 * rng.random()
        # the truth is the strongest rival of a mistake, so logprob scorers can see it
        rivals = [truth] + [sampled + k for k in _NEIGHBOURS[:5] if sampled + k != truth]
        weights = [0.55 + 0.3 * rng.random(), 0.2, 0.1, 0.06, 0.04, 0.03][: len(rivals)]
    return _with_p(prefix + format_number(sampled), ps, [prefix + format_number(r) for r in rivals], weights)


def _letter_dist(
    sampled: str, truth: str, letters: tuple[str, ...], correct: bool, p: float, rng: random.Random
) -> Dist:
    others = [x for x in letters if x != sampled and x != truth]
    weights = [0.1 + rng.random() for _ in others]
    if correct:
        ps = min(0.999, max(0.5, p + 0.1 * (rng.random() - 0.3)))
        return _with_p(sampled, ps, others, weights)
    ps = 0.35 + 0.3 * rng.random()
    scale = sum(weights) or 1.0
    return _with_p(sampled, ps, [truth] + others, [scale * 1.6] + weights)


@dataclass(slots=True)
class _Task:
    """What the prompt asks, shared by all choices of one request."""

    last_user: str
    words: list[str]
    names: list[str]
    bare: bool
    arith: Arithmetic | None
    mc: MultipleChoice | None
    mc_truth: str  # the correct letter when `mc` is set, else ""
    qdigest: bytes
    judge: Verdict | None = None  # a grading prompt: the verdict every choice gives


def _analyse(body: ChatRequest, seed_prefix: bytes) -> _Task:
    messages = body["messages"]
    last_user = ""
    for msg in reversed(messages):
        if msg.get("role") == "user":
            last_user = message_text(msg.get("content"))
            break
    else:
        last_user = message_text(messages[-1].get("content"))
    mc = find_multiple_choice(last_user)
    arith = find_arithmetic(mc.question if mc else last_user)
    truth = ""
    if mc is not None:
        if arith is not None:
            truth = next((ltr for ltr, txt in zip(mc.letters, mc.texts) if option_number(txt) == arith.value), "")
        if not truth:
            # no way to know: the "knowledge" is a hash of the question, the same for every model
            h = blake2b(seed_prefix + last_user.encode(), digest_size=8).digest()
            truth = mc.letters[int.from_bytes(h, "big") % len(mc.letters)]
    bare = any(
        wants_bare_number(message_text(m.get("content")))
        for m in messages
        if m.get("role") in ("system", "developer", "user")
    )
    qdigest = _question_digest(body, seed_prefix)
    return _Task(last_user, prompt_words(last_user), proper_nouns(last_user), bare, arith, mc, truth, qdigest)


def _question_digest(body: ChatRequest, seed_prefix: bytes) -> bytes:  # the question's own draws
    return blake2b(seed_prefix + orjson.dumps(body["messages"], option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _choose(qdigest: bytes, index: int, repeat: int, rng: random.Random) -> float:
    """A uniform draw for correctness that is partly shared across models and settings.

    Half the time it depends only on the messages (some questions are just hard), a quarter
    on messages+repeat, a quarter on the full request; the marginal stays uniform.
    """
    coin, own = rng.random(), rng.random()
    if coin < 0.5:
        return _u(qdigest)
    if coin < 0.75:
        return _u(
            blake2b(qdigest + repeat.to_bytes(8, "big", signed=True) + index.to_bytes(4, "big"), digest_size=8).digest()
        )
    return own


def _answer_and_dist(task: _Task, correct: bool, p: float, rng: random.Random) -> tuple[str | None, Dist | None, bool]:
    """The literal to place (e.g. "42" or "B"), its logprob distribution, and whether it is a
    number; (None, None, False) for a prompt that asks nothing recognised."""
    if task.judge is not None:  # the verdict first, alone on its line, then the reasoning
        v = task.judge
        return v.first, _with_p(v.first, v.p, list(v.rivals), [1.0 / (k + 1) for k in range(len(v.rivals))]), False
    if task.mc is not None:
        letters = task.mc.letters
        answer = task.mc_truth if correct else rng.choice([x for x in letters if x != task.mc_truth])
        return answer, _letter_dist(answer, task.mc_truth, letters, correct, p, rng), False
    if task.arith is not None:
        truth = task.arith.value
        value = truth if correct else truth + rng.choice(_WRONG_OFFSETS) * rng.choice((-1, 1))
        prefix = "" if task.bare else " "
        return format_number(value), _number_dist(value, truth, correct, p, rng, prefix), True
    return None, None, False


def _text_tokens(
    body: ChatRequest, task: _Task, rng: random.Random, answer: str | None, number_answer: bool, dist: Dist | None
) -> tuple[list[str], dict[int, Dist]]:
    """A text answer's tokens (JSON when response_format asks for it) and the distributions
    at the answer's token."""
    dists: dict[int, Dist] = {}
    fmt = body.get("response_format")
    kind = fmt.get("type") if fmt is not None else None
    if fmt is not None and kind in ("json_object", "json_schema"):
        placed = None
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            ctx = SchemaContext(rng, task.words, task.names, answer, number_answer, schema)
            obj = instance_for_schema(schema, ctx)
            placed = ctx.placed
        elif answer is not None:
            obj, placed = {"answer": ANSWER_SLOT}, "raw" if number_answer else "quoted"
        else:
            obj = {"answer": " ".join(task.words[:3]) or "ok", "keywords": task.words[:3]}
        tokens, at = split_slot(orjson.dumps(obj).decode(), answer or "", quoted=placed == "quoted")
        if at is not None and dist is not None:
            dists[at] = Dist(dist.p, tuple((a.strip(), q) for a, q in dist.alts))
        return tokens, dists
    if task.judge is not None and dist is not None:
        dists[0] = dist
        return [task.judge.first, "\n", *tokenize(task.judge.reasoning)], dists
    if answer is not None and dist is not None:  # both are set for a quiz or a sum, or neither
        if task.mc is not None or task.bare:
            dists[0] = dist
            return [answer], dists
        dists[3] = dist
        return ["The", " answer", " is", " " + answer, "."], dists
    return filler_tokens(rng, task.words), dists


def _make_choice(
    body: ChatRequest, task: _Task, index: int, repeat: int, seed: int, effort: str, p: float
) -> ChoiceAnswer:
    rng = random.Random(seed)
    correct = _choose(task.qdigest, index, repeat, rng) < p
    lo, hi = REASONING_TOKENS[effort]
    reasoning = rng.randint(lo, hi) if hi else 0
    answer, dist, number_answer = _answer_and_dist(task, correct, p, rng)

    tools = body.get("tools")
    fn = pick_tool(tools, body.get("tool_choice", "auto"), task.last_user, rng) if tools else None
    tokens: list[str] = []
    dists: dict[int, Dist] = {}
    tool_call: ToolCall | None = None
    if fn is not None:
        ctx = SchemaContext(rng, task.words, task.names, answer, number_answer, fn.get("parameters") or {})
        tool_call = tool_call_for(fn, ctx, rng, answer)
    else:
        tokens, dists = _text_tokens(body, task, rng, answer, number_answer, dist)
    reasoning, tokens, tool_call, visible, finish = fit_budget(body, reasoning, tokens, tool_call)
    content = None if tool_call is not None else "".join(tokens)
    return ChoiceAnswer(index, tokens, dists, content, tool_call, reasoning, visible, finish, seed ^ 0x5EED_1090B5)


def request_digest(body: ChatRequest, seed: int, repeat: int) -> bytes:
    key = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
    prefix = f"{seed}|{repeat}|".encode()
    return blake2b(prefix + orjson.dumps(key, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def answer_request(body: ChatRequest, seed: int = 0, repeat: int = 0) -> Answer:
    """Generate every choice of a validated request."""
    digest = request_digest(body, seed, repeat)
    base = int.from_bytes(digest, "big")
    model = body["model"]
    profile = profile_for(model)
    effort = _effort(body, profile)
    p = _p_correct(body, profile, effort)
    task = _analyse(body, f"{seed}|".encode())
    judging = find_judge(task.last_user)
    if judging is not None:
        # drawn from the sim's seed and what the judge reads, not the request's digest, so that
        # a pairwise verdict does not depend on the order the two answers were shown in
        task.judge = judge_verdict(judging, p, seed)
    n = body.get("n") or 1
    choices = [_make_choice(body, task, i, repeat, _choice_seed(base, i), effort, p) for i in range(n)]
    prompt = count_prompt(body["messages"], body.get("tools"))
    return Answer(f"chatcmpl-{digest.hex()}", CREATED_BASE + base % 86_400, model, choices, prompt)


def _choice_seed(base: int, index: int) -> int:  # each choice its own Random
    return base + index * 0x9E3779B97F4A7C15


def correct_choices(body: ChatRequest, seed: int, repeats: range) -> list[list[bool]]:
    """Per repeat, which choices answer_request gets right — its own first draw, without writing
    the answers (a simulation of thousands of runs needs only these)."""
    profile = profile_for(body["model"])
    p, question = _p_correct(body, profile, _effort(body, profile)), _question_digest(body, f"{seed}|".encode())
    digests = {r: int.from_bytes(request_digest(body, seed, r), "big") for r in repeats}
    n = body.get("n") or 1
    return [
        [_choose(question, i, r, random.Random(_choice_seed(digests[r], i))) < p for i in range(n)] for r in repeats
    ]
