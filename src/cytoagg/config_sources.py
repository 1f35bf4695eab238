"""Where each config value came from: the config files (the ``--configfile`` ones, or the demo ``config.yaml``
when none is given), ``--config`` on the command line, or the schema's defaults.

The Snakefile reads the demo config only when no ``--configfile`` is given, so a config of one's own starts from
the schema's defaults and never inherits the demo's plates or scaled-down sizes. When the Snakefile is parsed, one
line says which files were read and how many keys came from the defaults; rule ``config_used`` writes every value
with its source to ``results/config_used.yaml``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from .io.files import write_text

DEFAULT = "schema default"
COMMAND_LINE = "--config"


def leaves(config: Mapping, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value for every value that is not itself a mapping (lists are values)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(leaves(value, f"{name}."))
        else:
            out[name] = value
    return out


def config_sources(config: Mapping, layers: Sequence[tuple[str, Mapping]]) -> dict[str, str]:
    """Dotted key of every value of the (validated, default-filled) ``config`` -> where it came from: the last of
    ``layers`` (name, that layer's own values, in the order they were applied) that sets it, else the schema."""
    sources = {key: DEFAULT for key in leaves(config)}
    for name, values in layers:
        for key in leaves(values or {}):
            for candidate in list(sources):  # a layer may set a whole section ({} or a mapping) or one value
                if candidate == key or candidate.startswith(f"{key}."):
                    sources[candidate] = name
    return sources


def describe_sources(files: Sequence[str], demo: bool, sources: Mapping[str, str], config_used: str) -> str:
    """The one line the Snakefile logs: the files read, what ``--config`` set, how many keys are defaults."""
    if demo:
        read = f"{', '.join(files)} (the demo config: read because no --configfile was given)"
    else:
        read = f"{', '.join(files)} (the demo config.yaml is not read when --configfile is given)"
    overridden = [k for k, s in sources.items() if s == COMMAND_LINE]
    n_default = sum(s == DEFAULT for s in sources.values())
    parts = [f"cytoagg config: {read}"]
    if overridden:
        parts.append(f"--config sets {', '.join(overridden[:6])}{' ...' if len(overridden) > 6 else ''}")
    parts.append(f"{n_default} of {len(sources)} settings are the schema's defaults "
                 f"(workflow/schemas/config.schema.yaml); every value and its source: {config_used}")
    return "; ".join(parts)


def config_used_text(config: Mapping, sources: Mapping[str, str], files: Sequence[str]) -> str:
    """The whole config as YAML, each value with a comment naming its source (values written as JSON, which YAML
    reads)."""
    lines = [
        "# The config this run used: every value, with where it came from (a config file, --config, or the",
        "# schema's default, workflow/schemas/config.schema.yaml). Written by rule config_used; not read by the",
        f"# workflow. Config files read, in order: {', '.join(files)}.",
    ]

    def walk(values: Mapping, indent: str, prefix: str) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                lines.append(f"{indent}{key}:")
                walk(value, indent + "  ", f"{name}.")
            else:
                lines.append(f"{indent}{key}: {json.dumps(value)}  # {sources.get(name, DEFAULT)}")

    walk(config, "", "")
    return "\n".join(lines) + "\n"


def write_config_used(config: Mapping, sources: Mapping[str, str], files: Sequence[str], out, log=None) -> None:
    """Rule config_used: ``out`` (and one line in ``log``, when given)."""
    write_text(config_used_text(config, sources, files), out)
    if log is not None:
        write_text(f"wrote {out} (config files: {', '.join(files)})\n", log)
