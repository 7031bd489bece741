"""results.parquet as pandas should read it: the integer columns (tokens, http_status,
attempts, parameters) stay integers when some rows are null, instead of becoming float64.

`pd.read_parquet` turns an int64 column with one null (an error row has no usage) into float64:
`prompt_tokens` 540.0 and NaN. `read_results` maps Arrow's int64 to pandas' nullable Int64
and bool to boolean, so an error row reads <NA> and every other value stays an integer.
`pd.read_parquet(path, dtype_backend="numpy_nullable")` does the same (and makes strings
pandas' string dtype too).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evalrun.run.store import RESULTS

if TYPE_CHECKING:
    import pandas as pd


def read_results(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A run's results.parquet (give the run directory or the file) with nullable integer and
    boolean columns."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return pq.read_table(path, columns=columns).to_pandas(types_mapper=mapping.get)
