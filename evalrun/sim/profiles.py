"""Per-model behaviour: skill, latency and reasoning defaults, and how parameters move them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from evalrun.sim.wire import KNOWN_MODELS


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How good, how slow and how thoughtful a simulated model is."""

    skill: float
    base_ms: float
    per_token_ms: float
    default_effort: str
    can_disable_thinking: bool


PROFILES: dict[str, ModelProfile] = {
    "gemini-3.1-pro-preview": ModelProfile(0.95, 250.0, 3.0, "medium", False),
    "gemini-3-pro-preview": ModelProfile(0.90, 250.0, 3.0, "medium", False),
    "gemini-2.5-flash-lite": ModelProfile(0.72, 80.0, 1.0, "none", True),
}
OTHER_PROFILE = ModelProfile(0.75, 100.0, 1.0, "none", True)
assert tuple(sorted(PROFILES)) == tuple(sorted(KNOWN_MODELS))

EFFORT_BONUS = {"none": -0.05, "low": 0.0, "medium": 0.02, "high": 0.04}
REASONING_TOKENS = {"none": (0, 0), "low": (64, 128), "medium": (256, 512), "high": (1024, 2048)}
TEMPERATURE_PENALTY = 0.12
# A prompt that tells the model to guess makes it careless: this is how a demo or a test
# shows a prompt regression (the same model, parameters and prompt name; a worse prompt).
GUESS_PENALTY = 0.35
GUESS_CUE = re.compile(r"\bguess", re.IGNORECASE)
TOP_P_BONUS = 0.05
P_MIN, P_MAX = 0.02, 0.995


def profile_for(model: str) -> ModelProfile:
    return PROFILES.get(model, OTHER_PROFILE)
