"""Where a run directory or a dataset may live: a local path, or a URL of a filesystem that
pyarrow (s3, gs, hdfs, abfs) or, when installed, fsspec knows. Anything else is refused while
the config is read — before a request is sent — with the schemes that are allowed."""

from __future__ import annotations

import re

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
PYARROW_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
DATASET_ONLY = ("http", "https")  # read once into a local copy; nothing is written there


def url_scheme(text: str) -> str | None:
    """'s3' for s3://bucket/x; None for a local path (C:\\data too: one letter is a drive)."""
    m = _URL.match(text)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else None


def _fsspec_schemes() -> tuple[str, ...]:
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return ()
    return tuple(sorted(known_implementations))


def check_location(text: str, what: str) -> str:
    """`text` if it is a local path or a URL evalrun can read and write; ValueError otherwise."""
    scheme = url_scheme(text)
    if scheme is None or scheme == "file":
        return text
    allowed = PYARROW_SCHEMES + (DATASET_ONLY if what == "dataset" else ())
    if scheme not in allowed and scheme not in DATASET_ONLY and scheme in _fsspec_schemes():
        from fsspec.registry import get_filesystem_class

        try:  # known to fsspec, but its package may be missing: say so now, not after the run
            get_filesystem_class(scheme)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"{text!r}: {scheme}:// needs a package that is not installed ({exc})") from None
        return text
    if scheme in allowed:
        if scheme in PYARROW_SCHEMES and not text.split("://", 1)[1].strip("/"):
            raise ValueError(f"{text!r} names no bucket or folder; e.g. {scheme}://bucket/evals")
        return text
    more = " (or any fsspec protocol once fsspec is installed)" if not _fsspec_schemes() else ""
    raise ValueError(
        f"{text!r}: {scheme}:// is not a supported {what} location; use a local path or "
        f"{', '.join(s + '://' for s in allowed)}{more}"
    )
