"""The user docs stay in sync with the code: every key of the experiment's config models is in
docs/configuration.md, every CLI command and flag in docs/commands.md, links point at files
that exist, and no user doc cites internal issue numbers or commits."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from evalrun.cli_parser import build_parser
from evalrun.config.models import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def config_keys(tp: object, seen: set[type] | None = None) -> set[str]:
    """Every field name (or alias) reachable from `tp`: nested models, lists, dicts, unions."""
    seen = set() if seen is None else seen
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return set()
        seen.add(tp)
        keys: set[str] = set()
        for name, field in tp.model_fields.items():
            keys.add(field.alias or name)
            keys |= config_keys(field.annotation, seen)
        return keys
    return set().union(*(config_keys(arg, seen) for arg in typing.get_args(tp)))


def cli_words() -> set[str]:
    """Every subcommand and every user-facing flag (suppressed internal ones left out)."""
    parser = build_parser(["serve-sim"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    words = {o for a in parser._actions for o in a.option_strings if a.help != argparse.SUPPRESS}
    for name, command in sub.choices.items():
        words.add(name)
        words |= {o for a in command._actions for o in a.option_strings if a.help != argparse.SUPPRESS}
    return words - {"-h", "--help"}


def test_every_config_key_is_in_the_configuration_reference() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = config_keys(ExperimentConfig)
    assert len(keys) > 100  # the walk reached the nested models (providers, simulator, scorers, prices…)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"keys of the config models not in docs/configuration.md: {missing}"


def test_every_command_and_flag_is_in_the_commands_reference() -> None:
    text = (ROOT / "docs" / "commands.md").read_text()
    missing = sorted(w for w in cli_words() if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text))
    assert not missing, f"commands or flags not in docs/commands.md: {missing}"


def test_user_docs_cite_no_issue_or_commit_and_the_readme_is_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    commit = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
    for path in [ROOT / "README.md", *DOCS]:
        text = path.read_text()
        for pattern in (re.compile(r"\bissues? \d+", re.I), re.compile(r"#\d+\b"), commit):
            assert not pattern.search(text), f"{path.name}: internal reference {pattern.search(text)}"


def test_links_point_at_files_that_exist() -> None:
    for path in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (path.parent / target.split("#")[0]).exists(), f"{path.name} links to {target}, which is missing"
