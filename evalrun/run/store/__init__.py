"""What a run keeps: the journal, results.parquet, the response cache, the run directory, object storage."""

from typing import TYPE_CHECKING

from evalrun.run import lazy_face

if TYPE_CHECKING:
    from evalrun.run.store.cache import (
        CACHE_FILE,
        CachedAnswer,
        Caches,
        Keyer,
        ResponseCache,
        cache_problem,
        cached_rows,
        endpoint_identity,
        fix_hint,
        open_caches,
    )
    from evalrun.run.store.framing import encode
    from evalrun.run.store.journal import JOURNAL, JUDGE_JOURNAL, Journal, journal_state, read_journal, repair_journal
    from evalrun.run.store.listing import ListingError, find_provider, list_models
    from evalrun.run.store.rundir import (
        check_run_dir,
        grid_changed,
        holding_run_dirs,
        lock_run_dir,
        read_manifest,
    )
    from evalrun.run.store.sink import ResultsSink
    from evalrun.run.store.storage import (
        check_no_run,
        check_writable,
        fetch_dataset,
        fetch_run,
        is_url,
        join,
        list_runs,
        publish_or_keep,
        response_cache_dir,
        staging_dir,
    )
    from evalrun.run.store.store import (
        DATA_PREFIX,
        MANIFEST,
        RESULTS,
        SUMMARY,
        RowHook,
        manifest_if_any,
        now_iso,
        request_rows,
        require_finished,
        rescore,
        result_rows,
        results_file,
        write_json,
        write_results,
    )

__all__ = [
    "CACHE_FILE",
    "DATA_PREFIX",
    "JOURNAL",
    "JUDGE_JOURNAL",
    "MANIFEST",
    "RESULTS",
    "SUMMARY",
    "CachedAnswer",
    "Caches",
    "Journal",
    "Keyer",
    "ListingError",
    "ResponseCache",
    "ResultsSink",
    "RowHook",
    "cache_problem",
    "cached_rows",
    "check_no_run",
    "check_run_dir",
    "check_writable",
    "encode",
    "endpoint_identity",
    "fetch_dataset",
    "fetch_run",
    "find_provider",
    "fix_hint",
    "grid_changed",
    "holding_run_dirs",
    "is_url",
    "join",
    "journal_state",
    "list_models",
    "list_runs",
    "lock_run_dir",
    "manifest_if_any",
    "now_iso",
    "open_caches",
    "publish_or_keep",
    "read_journal",
    "read_manifest",
    "repair_journal",
    "request_rows",
    "require_finished",
    "rescore",
    "response_cache_dir",
    "result_rows",
    "results_file",
    "staging_dir",
    "write_json",
    "write_results",
]

if not TYPE_CHECKING:  # mypy reads the imports above; at run time each name loads on first use
    __getattr__ = lazy_face(__name__, __file__)
