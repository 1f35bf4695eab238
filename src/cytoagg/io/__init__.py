"""Reading and writing: column conventions, atomic files, the Parquet layouts, platemaps, a plate's cells by well."""

from .files import InputError

__all__ = ["InputError"]
