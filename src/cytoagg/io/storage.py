"""Plates in S3, read through Snakemake's storage plugin for S3 (snakemake-storage-plugin-s3): what the
Snakefile sets up when a dataset location is an ``s3://`` URL (workflow/rules/common.smk).

Requests to the store are what a run of thousands of plates in S3 waits on, so they are kept few:

- **While the Snakefile is parsed**, one listing of the dataset path's folder finds every plate's object
  (:func:`cytoagg.config.check_plates_in_s3`, a page per 1,000 objects) and :func:`remember_objects` keeps their
  sizes: Snakemake then asks no HEAD per plate to learn that its input exists, or its size.
- **While jobs run**, Snakemake 9.27's scheduler asks for the existence and size of every input of every job
  that is ready but waiting, in each scheduling round; and it runs about one round a second per job finished so
  far (each round re-arms a timer of ``--max-jobs-per-timespan``). For a file on disk that is a ``stat``; for an
  object in S3 it is two HEAD requests, so thousands of waiting ``ingest`` jobs would make requests that grow
  with plates x finished jobs, and rounds that take minutes. An object's existence and size do not change
  during a run (a newer upload is found by its modification time, which is still asked each time), so
  :func:`ask_existence_and_size_once` makes them asked once per object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

logger = logging.getLogger(__name__)

_MARK = "_cytoagg_asks_once"
# What this snakemake process has learnt of objects, by s3:// URL (several jobs' inputs can be one object: the
# platemap of every plate; and each job has storage objects of its own)
_EXISTING: set[str] = set()
_SIZES: dict[str, int] = {}


def remember_objects(sizes: Mapping[str, int]) -> None:
    """Objects known to exist (found by a listing), with their sizes: neither is asked again."""
    _EXISTING.update(sizes)
    _SIZES.update(sizes)


def list_objects(storage_object, prefix: str) -> Iterator[tuple[str, int]]:
    """``(url, size)`` of every object whose URL starts with ``prefix`` (``s3://bucket/...``), in pages of 1,000,
    through ``storage_object``'s bucket (a storage object of the plugin, in the same bucket)."""
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    for item in storage_object.s3bucket().objects.filter(Prefix=key_prefix):
        yield f"s3://{bucket}/{item.key}", item.size


def ask_existence_and_size_once() -> None:
    """Make the S3 plugin's storage objects remember that they exist and their size (a no-op when done before)."""
    import snakemake_storage_plugin_s3 as plugin

    base = plugin.StorageObject
    if getattr(base, _MARK, False):
        return

    class StorageObject(base):
        """The plugin's storage object; ``exists`` (once true) and ``size`` are asked once per URL."""

        def exists(self) -> bool:
            if self.query not in _EXISTING:
                if not super().exists():
                    return False  # asked again next time: it may appear
                _EXISTING.add(self.query)
            return True

        def size(self) -> int:
            if self.query not in _SIZES:
                _SIZES[self.query] = super().size()
            return _SIZES[self.query]

    setattr(StorageObject, _MARK, True)
    StorageObject.__module__ = base.__module__
    StorageObject.__qualname__ = base.__qualname__
    # the storage provider finds its object class by this module attribute (StorageProviderBase.get_storage_object_cls)
    plugin.StorageObject = StorageObject
