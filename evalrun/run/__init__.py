"""Stage 2: Experiment → grid → rate-limited requests → journal → results.parquet."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path


def lazy_face(package: str, face_file: str) -> Callable[[str], object]:
    """A sub-package face's `__getattr__`: a name the face offers is imported from its module
    on first use. A face that imported all its modules up front would make
    `from evalrun.run.store import RESULTS` load the response cache, the HTTP client and
    aiohttp as well (+170 ms before `evalrun summary` prints anything), and two faces that
    re-export each other's users would meet half-initialized. The face's `if TYPE_CHECKING:`
    imports stay the one list of what it offers (and what mypy checks)."""
    where: dict[str, str] = {}

    def load(name: str) -> object:
        if not where:
            for node in ast.walk(ast.parse(Path(face_file).read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
                    where.update({a.asname or a.name: str(node.module) for a in node.names})
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # the next lookup does not come here
        return value

    return load
