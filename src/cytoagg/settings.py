"""The typed boundary between the workflow's rules and the package.

Each step has a frozen settings dataclass; its rule passes the values as one JSON object (``--params``),
built from the validated config. ``from_params`` is strict both ways: a key the class does not know and
a field the JSON lacks are both errors naming them, so a setting added to the schema can never be dropped
on its way to the code, and no default is repeated here (the config schema is the only place defaults
live). Nested settings (e.g. every step's :class:`~cytoagg.io.columns.Annotation`) are built the same way.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from .io.files import InputError

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin of the frozen dataclasses that carry a step's settings."""

    @classmethod
    def from_params(cls: type[S], params: dict, where: str | None = None) -> S:
        where = where or cls.__name__
        if not isinstance(params, dict):
            raise InputError(f"{where}: settings must be a JSON object, got {type(params).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        missing = sorted(set(fields) - set(params))
        if unknown or missing:
            raise InputError(
                f"{where}: "
                + "; ".join(
                    part for part in (
                        f"unknown setting(s) {unknown}" if unknown else "",
                        f"missing setting(s) {missing}" if missing else "",
                    ) if part
                )
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for name in fields:
            value, kind = params[name], hints[name]
            nested = _settings_class(kind)
            if nested is not None and isinstance(value, dict):
                value = nested.from_params(value, f"{where}.{name}")
            values[name] = value
        return cls(**values)

    def to_params(self) -> dict[str, Any]:
        """The JSON-ready dict ``from_params`` reads back."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _settings_class(kind) -> type[Settings] | None:
    """The Settings class of a field's type (``X`` or ``X | None``), else None."""
    for candidate in (kind, *typing.get_args(kind)):
        if isinstance(candidate, type) and issubclass(candidate, Settings):
            return candidate
    return None


def read_params(text: str) -> dict:
    """The JSON object of ``--params``; ``cytoagg_version`` (a rerun trigger the rules add) is not a setting."""
    try:
        params = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise InputError(f"--params is not valid JSON: {e}") from e
    if not isinstance(params, dict):
        raise InputError("--params must be a JSON object")
    params.pop("cytoagg_version", None)
    return params
