"""The exceptions evalrun raises and records.

EvalrunError
├── ConfigError      bad experiment file / CLI input → exit code 2, nothing sent
├── RequestError     one attempt of one request failed (recorded, maybe retried); its
│                    branch is in `evalrun.run.http.errors`
└── StorageError     the run directory cannot take what must be written (`evalrun.run.http.errors`)
"""

from __future__ import annotations


class EvalrunError(Exception):
    """Base of every error evalrun raises on purpose."""


class ConfigError(EvalrunError):
    """The experiment file or a command-line value is wrong; the message says where and why."""
