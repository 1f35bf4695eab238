"""The CLI: every subcommand's settings class resolves, and steps that need no torch do not import it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cytoagg.cli import SETTINGS_CLASSES, build_parser, settings_class
from cytoagg.settings import Settings


def test_every_settings_class_resolves_to_a_settings_dataclass_of_a_known_subcommand():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert set(SETTINGS_CLASSES) <= commands
    for command in SETTINGS_CLASSES:
        assert issubclass(settings_class(command), Settings), command
    assert settings_class("plot-map") is None


@pytest.mark.parametrize("command", ["ingest", "normalize", "aggregate", "profile-pipelines", "evaluate", "summarize"])
def test_steps_without_a_network_do_not_import_torch(command):
    code = (
        "import sys; from cytoagg.cli import settings_class; "
        f"settings_class({command!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
