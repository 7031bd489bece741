"""The typed records that flow through a run, answers coerced field by field, logprobs kept flat."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.records.coerce import Notes
    from evalrun.run.records.logprobs import from_arrow, from_stored, rows_from_stored, to_arrow
    from evalrun.run.records.records import (
        Cell,
        ChatRequest,
        Choice,
        Completion,
        Logprobs,
        Message,
        PromptEntry,
        RequestSpec,
        Result,
        Usage,
    )
    from evalrun.run.records.secrets import mask, mask_bytes, provider_key, use_keys
    from evalrun.run.records.storable import nulled, storable_row

__all__ = [
    "Cell",
    "ChatRequest",
    "Choice",
    "Completion",
    "Logprobs",
    "Message",
    "Notes",
    "PromptEntry",
    "RequestSpec",
    "Result",
    "Usage",
    "from_arrow",
    "from_stored",
    "mask",
    "mask_bytes",
    "nulled",
    "provider_key",
    "rows_from_stored",
    "storable_row",
    "to_arrow",
    "use_keys",
]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
