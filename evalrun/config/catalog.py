"""Which models a provider serves, as far as evalrun knows before it sends anything.

A named preset knows its catalog: EvoLink's comes from its model pages (the API contract),
the simulator's from the simulator. A generic provider (its own base_urls, no preset) serves
whatever its server says, so its names are not checked; `evalrun models NAME` asks the server.
A model a preset does not list yet is used through the provider's `extra_models:`.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalrun.config.diagnostics import did_you_mean
from evalrun.config.models import ProviderConfig

# the models EvoLink's chat-completions pages document; its `GET /v1/models` is the truth
EVOLINK_MODELS = ("gemini-2.5-flash-lite", "gemini-3-pro-preview", "gemini-3.1-pro-preview")


@dataclass(frozen=True, slots=True)
class Retirement:
    """A model its maker retired: on which date, and what to use instead."""

    on: str
    successor: str


RETIRED = {"gemini-3-pro-preview": Retirement("2026-03-09", "gemini-3.1-pro-preview")}


def catalog(provider: ProviderConfig) -> tuple[str, ...] | None:
    """The names `provider` serves (its extra_models included), or None when evalrun cannot
    know them: a generic endpoint, or a simulator told to answer any model."""
    if provider.kind == "simulator":
        # the provider's extra_models were handed to the simulator, which serves them too
        return provider.simulator.served_models() if provider.simulator.strict_models else None
    if provider.preset == "evolink":
        return tuple(dict.fromkeys((*EVOLINK_MODELS, *provider.extra_models)))
    return None


def unknown_model(model: str, name: str, provider: ProviderConfig) -> str | None:
    """Why provider `name` would refuse `model` (an error's text), or None when it serves it
    or nothing is known."""
    known = catalog(provider)
    if known is None or model in known:
        return None
    what = "The embedded simulator" if provider.kind == "simulator" else f"The {provider.preset} preset"
    return (
        f"{model!r} is not a model of provider {name!r}{did_you_mean(model, known) or '.'} {what} serves "
        f"{', '.join(known)}; a model it does not list yet goes in providers.{name}.extra_models"
    )


def retired_note(model: str, name: str, provider: ProviderConfig) -> str | None:
    """A warning for a model its maker retired, sent to a real endpoint (the simulator still
    simulates it as documented, so there it is no news)."""
    retired = RETIRED.get(model)
    if retired is None or provider.kind == "simulator":
        return None
    return (
        f"model {model!r} (provider {name!r}) was retired by Google on {retired.on}; the provider may refuse it "
        f"(404: that model stops, the rest run) or answer with another model (the response_model column says "
        f"which). Use {retired.successor!r} for new results"
    )
