"""Ingest one plate: raw CellProfiler output or a single-cell table -> one per-cell Parquet.

Sources: a CellProfiler SQLite file, a folder of per-site CellProfiler CSV folders, or a single-cell
Parquet/CSV already in pycytominer layout. The output holds ``Metadata_*`` strings (plate, well, source
metadata, platemap annotations) and then float32 features. Rows are ordered by well, so later steps can read
each well as one contiguous run. Sources are read in chunks and written row group by row group
(``rows_per_group``: 50,000 cells, fewer on plates wider than 1,342 features, so a row group stays <= 256 MB).

A SQLite plate is read by worker processes (``workers``), each running the compartments' join for a group of
images; the main process adds the metadata with Arrow and writes (benchmarks/ingest.md). Its peak memory is
about 0.4 GB per process plus one row group, whatever the plate's length.
"""

from .formats import detect_format
from .plate import ingest_plate

__all__ = ["detect_format", "ingest_plate"]
