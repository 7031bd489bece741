"""Run directories and datasets on object storage (s3://, gs://, hdfs://, any fsspec protocol).

A run whose `reports_dir` is a URL works in a local staging directory — the journal stays on
local disk, appended and flushed per request as always — and publishes the run directory's
files to `<reports_dir>/<experiment>/<run_id>/` when it ends (and again after each resume):
journal, results, summary, then manifest.json last, each object written whole (an S3 PUT is
atomic), so a reader that finds the manifest finds the rest. Reading commands (`summary`,
`report`, `cost`, `compare`, `merge`, `--baseline latest`) fetch a remote run's files into a local
cache first. Datasets at a URL (also http(s)://) are read into a local copy once per content.

Credentials come from the filesystem's usual environment (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION);
evalrun never reads, stores or prints them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from evalrun.config.locations import DATASET_ONLY, url_scheme
from evalrun.errors import ConfigError
from evalrun.run.store.manifest_io import mark_unpublished

logger = logging.getLogger(__name__)

# what a run directory holds, in publishing order: the manifest last (readers look for it)
PUBLISHED = ("journal.jsonl", "results.parquet", "summary.parquet", "manifest.json")
READ = ("manifest.json", "results.parquet", "summary.parquet")
COPY_CHUNK = 1 << 20
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def is_url(text: str | Path) -> bool:
    return url_scheme(as_location(text)) not in (None, "file")


def as_location(arg: str | Path) -> str:
    """A command-line argument as given: pathlib folds s3://b/x into s3:/b/x; unfold it."""
    text = str(arg)
    return _MANGLED.sub(lambda m: m.group(1) + "://", text) if isinstance(arg, Path) else text


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def cache_root() -> Path:
    """Local staging and cache: $EVALRUN_CACHE, else ~/.cache/evalrun (XDG_CACHE_HOME honoured)."""
    if os.environ.get("EVALRUN_CACHE"):
        return Path(os.environ["EVALRUN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "evalrun"


def staging_dir(url: str) -> Path:
    """The local directory of a remote run (its journal lives here): one per URL."""
    return cache_root() / "runs" / _local_name(url)


def response_cache_dir(reports_url: str) -> Path:
    """The local folder of `cache: true` when reports_dir is object storage (SQLite needs a
    local file): one per reports_dir URL, under the user's cache directory."""
    return cache_root() / "responses" / _local_name(reports_url)


def _local_name(url: str) -> str:
    """A URL as one local folder name: its last part, and a digest of the whole URL."""
    digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
    return f"{url.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a URL; a ConfigError when it cannot be opened."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(url)
        return fs, str(path)
    except (ValueError, NotImplementedError, OSError) as exc:  # ArrowInvalid, ArrowNotImplementedError
        first: Exception = exc
    try:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(url)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    except ImportError:
        pass
    except Exception as exc:  # fsspec's own error for this URL says more than pyarrow's
        first = exc
    raise ConfigError(f"{url}: cannot open this location ({type(first).__name__}: {first})")


def _said(exc: BaseException) -> str:
    """An object store's error on one line (pyarrow's S3 errors run over several)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def check_writable(url: str) -> None:
    """Write and delete a probe object under `url`: bad credentials or a missing bucket fail
    here, before a request is sent, not after the run has been paid for."""
    fs, base = filesystem(url)
    probe = f"{base}/.evalrun-probe"
    try:
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"reports_dir: cannot write to {url} ({type(exc).__name__}: {exc})") from None


def _copy_stream(src: Any, dst: Any) -> None:
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)


def publish_or_keep(local: Path, url: str) -> str | None:
    """Publish a run; when the store cannot take it (gone, refusing, unreachable): None is not
    returned but the one line that says where the answers are kept, where they were going and
    how to publish them later, and the local manifest says `unpublished`."""
    try:
        publish_run(local, url)
    except (OSError, ValueError, ConfigError) as exc:  # pyarrow: OSError (network, S3 errors), ArrowInvalid
        return mark_unpublished(local, url, _said(exc))
    return None


def check_no_run(url: str) -> None:
    """Refuse (exit 2) to write a run to a URL that already holds one: it would be replaced."""
    fs, base = filesystem(url)
    try:
        infos = fs.get_file_info([f"{base}/{name}" for name in PUBLISHED])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{url}: cannot be read ({_said(exc)})") from None
    held = [name for name, info in zip(PUBLISHED, infos, strict=True) if info.size is not None]
    if held:
        raise ConfigError(
            f"--out {url}: it already holds a run ({', '.join(held)}); merging would replace it and lose its "
            "answers. Merge into a new location"
        )


def publish_run(local: Path, url: str) -> None:
    """The run directory's files → `url`, the manifest last; each object written whole."""
    fs, base = filesystem(url)
    fs.create_dir(base, recursive=True)
    for name in PUBLISHED:
        path = local / name
        if not path.is_file():
            continue
        with path.open("rb") as src, fs.open_output_stream(f"{base}/{name}") as dst:
            _copy_stream(src, dst)
    logger.info("published %s to %s", local, url)


def publish_file(local: Path, url: str) -> None:
    """One file → the run at `url`, beside what publish_run wrote (written whole)."""
    fs, base = filesystem(url)
    with local.open("rb") as src, fs.open_output_stream(f"{base}/{local.name}") as dst:
        _copy_stream(src, dst)


def fetch_run(url: str, names: tuple[str, ...] = READ, into: Path | None = None) -> Path:
    """A remote run's files → a local directory (the cache, or `into`); returns it."""
    local = into or (cache_root() / "read" / staging_dir(url).name)
    local.mkdir(parents=True, exist_ok=True)
    try:
        _fetch_files(url, names, local)
    except (OSError, ValueError) as exc:  # the store is gone, or refuses
        raise ConfigError(f"{url}: cannot be read ({_said(exc)})") from None
    return local


def _fetch_files(url: str, names: tuple[str, ...], local: Path) -> None:
    import pyarrow.fs as pafs

    fs, base = filesystem(url)
    infos = fs.get_file_info([f"{base}/{n}" for n in names])
    if infos[0].type == pafs.FileType.NotFound:
        raise ConfigError(f"{url}: no {names[0]} there; is it a run directory?")
    for name, info in zip(names, infos, strict=True):
        if info.type == pafs.FileType.NotFound:
            (local / name).unlink(missing_ok=True)
            continue
        tmp = local / (name + ".tmp")
        with fs.open_input_stream(info.path) as src, tmp.open("wb") as dst:
            _copy_stream(src, dst)
        os.replace(tmp, local / name)


def list_runs(parent_url: str) -> list[str]:
    """The URLs of the run directories under an experiment's folder."""
    import pyarrow.fs as pafs

    fs, base = filesystem(parent_url)
    selector = pafs.FileSelector(base, allow_not_found=True)
    scheme = parent_url.split("://", 1)[0]
    return [f"{scheme}://{i.path}" for i in fs.get_file_info(selector) if i.type == pafs.FileType.Directory]


def fetch_dataset(url: str) -> Path:
    """A dataset at a URL → a local copy, fetched again only when its size or time changed."""
    scheme = url_scheme(url)
    suffix = Path(url.split("?", 1)[0]).suffix
    root = cache_root() / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    if scheme in DATASET_ONLY:
        import urllib.error
        import urllib.request

        target = root / (hashlib.blake2b(url.encode(), digest_size=12).hexdigest() + suffix)
        tmp = target.with_suffix(target.suffix + ".tmp")
        try:
            with urllib.request.urlopen(url, timeout=60) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"dataset {url}: cannot download it ({exc})") from None
        os.replace(tmp, target)
        return target
    try:
        return _fetch_copy(url, root, suffix)
    except (OSError, ValueError) as exc:  # the store is gone, or refuses
        raise ConfigError(f"dataset {url}: cannot read it ({_said(exc)})") from None


def _fetch_copy(url: str, root: Path, suffix: str) -> Path:
    import pyarrow.fs as pafs

    fs, path = filesystem(url)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise ConfigError(f"dataset {url}: not found")
    key = f"{url}|{info.size}|{info.mtime_ns}"
    target = root / (hashlib.blake2b(key.encode(), digest_size=12).hexdigest() + suffix)
    if not target.is_file():
        tmp = target.with_suffix(target.suffix + ".tmp")
        with fs.open_input_stream(path) as src, tmp.open("wb") as dst:
            _copy_stream(src, dst)
        os.replace(tmp, target)
    return target
