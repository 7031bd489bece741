"""`evalrun init [DIR]`: the quickstart (config, prices, dataset) written from package data, so
a `pip install` without the repository can run its first experiment.

The files under starter/ are copies of the repository's configs/quickstart.yaml,
configs/prices.yaml and datasets/arithmetic.jsonl; a test keeps them identical.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from evalrun.errors import ConfigError

FILES = ("configs/quickstart.yaml", "configs/prices.yaml", "datasets/arithmetic.jsonl")


def write_starter(folder: Path, force: bool = False) -> list[Path]:
    """Write the quickstart under `folder`; refuses to overwrite a file unless `force`."""
    source = resources.files("evalrun.config") / "starter"
    targets = [folder / name for name in FILES]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise ConfigError(
            f"evalrun init {folder}: {existing[0]} already exists; nothing was written "
            "(pick another folder, or --force to overwrite)"
        )
    for name, target in zip(FILES, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((source / name).read_bytes())
    return targets
