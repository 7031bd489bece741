"""One provider's HTTP side: the client with per-URL fallback, answer parsing, request errors, keys."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.http.client import Payloads, ProviderClient, Sent
    from evalrun.run.http.errors import (
        FULL_ERRNOS,
        APIStatusError,
        BadResponse,
        RequestError,
        StorageError,
        TransportError,
        is_quota_error,
    )

__all__ = [
    "FULL_ERRNOS",
    "APIStatusError",
    "BadResponse",
    "Payloads",
    "ProviderClient",
    "RequestError",
    "Sent",
    "StorageError",
    "TransportError",
    "is_quota_error",
]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
