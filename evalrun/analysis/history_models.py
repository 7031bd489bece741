"""`evalrun history --check-models`: does each provider still list the models the last run
asked for? Asked once per provider at GET {base_url}/models with the key from its recorded
`api_key_env` (never a chat request); a model no longer listed is a drift marker on the last
night, as a served model that changed is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from evalrun.analysis.history import Drift, History
from evalrun.errors import ConfigError

MODEL_LIST = "model list"


def _wanted(h: History) -> dict[str, dict[str, list[str]]]:
    """provider → model → the labels of the last night's cells that ask for it."""
    out: dict[str, dict[str, list[str]]] = {}
    for s in h.series:
        if s.points[-1] is not None:
            provider, model = orjson.loads(s.key)[:2]
            labels = out.setdefault(str(provider), {}).setdefault(str(model), [])
            if s.label not in labels:
                labels.append(s.label)
    return out


def _listed(name: str, settings: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, str]:
    """(the ids provider `name` lists, or None when it has no list; the URL asked)."""
    from evalrun.config.models import ProviderConfig
    from evalrun.run.records import provider_key
    from evalrun.run.store import list_models

    recorded = dict(settings)
    if recorded.get("kind") != "simulator":  # the manifest records the simulator's defaults for every provider
        recorded.pop("simulator", None)
    provider = ProviderConfig.model_validate(recorded)
    env = provider.api_key_env
    key = provider_key(name, env, "the last run's manifest") if env else None
    listed = list_models(name, provider, key)
    return listed.ids, listed.url


def model_list_drift(h: History) -> tuple[list[Drift], list[str]]:
    """Drift markers for the last night's models that their provider no longer lists, and a
    line for each provider that could not be asked or has no list."""
    from evalrun.run.store import ListingError

    last, index = h.runs[-1], len(h.runs) - 1
    drift: list[Drift] = []
    notes: list[str] = []
    for name, models in sorted(_wanted(h).items()):
        settings = last.providers.get(name)
        if settings is None:
            notes.append(f"--check-models: provider {name!r} is not recorded in the last run's manifest")
            continue
        try:
            ids, url = _listed(name, settings)
        except (ListingError, ConfigError) as exc:
            notes.append(f"--check-models: {exc}")
            continue
        except ValueError as exc:  # pydantic: settings recorded by another evalrun version
            notes.append(
                f"--check-models: provider {name!r}: its recorded settings no longer validate ({' '.join(str(exc).split())[:200]})"
            )
            continue
        if ids is None:
            notes.append(f"--check-models: provider {name!r} has no model list ({url} answered 404)")
            continue
        for model, labels in sorted(models.items()):
            if model not in ids:
                drift += [
                    Drift(last.run_id, index, MODEL_LIST, label, model, f"not listed at {url}") for label in labels
                ]
    return drift, notes
