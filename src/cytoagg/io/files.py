"""Files every step writes: atomic outputs (no reader ever sees half a file), small tables, locks, CPUs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad user input: the message names the file, column or setting."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    No reader ever sees a half-written file, and a failed step leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_UMASK)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as Slurm and taskset set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, log: logging.Logger | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; wait for a holder.

    For steps that keep state between runs (training's resume state): when snakemake itself is killed,
    its running job lives on, and a rerun must not work on the same files at the same time. The
    kernel releases the lock when its holder exits, killed or not, so a stale lock file never blocks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = log or logging.getLogger("cytoagg")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            log.warning("%s is held by another process (pid %s), e.g. a job left running when snakemake was killed; "
                        "waiting for it to end", path, holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock (some NFS or Lustre mounts): run unlocked
            log.warning("%s: cannot lock on this file system (%s); going on without the lock", path, e)
            yield
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_table(df: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a small table atomically; format from the suffix (.parquet, .csv, .md). ``metadata``: key-value
    pairs for a Parquet file's footer (ignored for CSV)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(df, preserve_index=False)
            if metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            pq.write_table(table, tmp, write_page_checksum=True)  # as cytoagg.io.parquet.CHECKSUMS
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported table suffix: {path}")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_names(names: Sequence[str], path: str | os.PathLike, log=None, source: str = "") -> None:
    """One name per line (a list too long for a command line, as the steps read it with :func:`read_names`)."""
    write_text("".join(f"{name}\n" for name in names), path)
    if log is not None:
        write_text(f"{len(names)} names{' from ' + source if source else ''} -> {path}\n", log)


def read_names(path: str | os.PathLike) -> list[str]:
    """A list of names from a text file, one per line (e.g. ``dataset.features_file``); blank lines and lines
    starting with ``#`` are skipped, surrounding spaces removed. A missing or empty file is an InputError."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise InputError(f"{path}: cannot read the list ({e})") from e
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise InputError(f"{path}: the list is empty (one name per line expected)")
    return names
