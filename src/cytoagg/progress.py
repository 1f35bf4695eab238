"""Progress on the console, where the user looks, while a step's full log goes to its log file.

A rule's command sends its stderr to the step's log (``2> {log}``). The rules' shell prefix
(``workflow/rules/common.smk``) first keeps the console (Snakemake's own stderr) open as file descriptor 3 and
names it in ``CYTOAGG_CONSOLE_FD``; the CLI then writes a few short lines there, each tagged with the step:

- every warning the step logs (one line, cut at ``MAX_CHARS``): what a user should not miss;
- a progress bar's refreshes (training epochs: ``train 12/40 (00:31 elapsed, ~01:12 left), loss=1.234``),
  at most one line per ``BAR_INTERVAL_S`` seconds, and the last;
- for the steps that read a whole plate (ingest, normalize), a heartbeat every ``HEARTBEAT_S`` seconds with
  what they have written so far, so a long plate never looks like a hang.

Run by hand (no ``CYTOAGG_CONSOLE_FD``), a step writes nothing more: its log is the console already.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

CONSOLE_FD_ENV = "CYTOAGG_CONSOLE_FD"
MAX_CHARS = 240
BAR_INTERVAL_S = 10.0
HEARTBEAT_S = 60.0
PROGRESS_LOGGER = "cytoagg.progress"  # records of this logger go to the console at any level

# tqdm's default bar, as it writes it to a file: "{desc}: {pct}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}{postfix}]"
_BAR = re.compile(r"^(?P<desc>.*?):\s*\d+%\|.*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                  r"\[(?P<elapsed>[^<\]]+)<(?P<remaining>[^,\]]+),\s*[^,\]]*(?:,\s*(?P<postfix>[^\]]*))?\]\s*$")


def console_stream():
    """The console the rules' shell prefix kept open (``CYTOAGG_CONSOLE_FD``), line-buffered; None when not set or
    not open."""
    fd = os.environ.get(CONSOLE_FD_ENV, "").strip()
    if not fd.isdigit():
        return None
    try:
        os.fstat(int(fd))
        return os.fdopen(int(fd), "w", buffering=1, closefd=False)
    except OSError:
        return None


def short(text: str, limit: int = MAX_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConsoleHandler(logging.Handler):
    """Warnings, and every record of :data:`PROGRESS_LOGGER`, as one short line each: ``[label] message``."""

    def __init__(self, stream, label: str):
        super().__init__(logging.INFO)
        self.stream, self.label = stream, label

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING and not record.name.startswith(PROGRESS_LOGGER):
            return
        try:
            self.stream.write(f"[{self.label}] {short(record.getMessage())}\n")
        except (OSError, ValueError):  # the console went away: the log still has everything
            pass


def bar_line(text: str) -> str | None:
    """A tqdm refresh as a short line (``desc n/total (elapsed, ~remaining left), postfix``, NaN values left
    out); None for text that is not a bar."""
    m = _BAR.match(text.strip())
    if m is None:
        return None
    items = [p.strip() for p in (m["postfix"] or "").split(",") if p.strip()]
    items = [p for p in items if not re.search(r"=\s*nan$", p)]
    remaining = m["remaining"].strip()
    left = "" if remaining == "?" else f", ~{remaining} left"
    line = f"{m['desc']} {m['n']}/{m['total']} ({m['elapsed'].strip()} elapsed{left})"
    return line + (", " + ", ".join(items) if items else "")


class BarRelay(io.TextIOBase):
    """Stands in for ``sys.stderr`` while a step runs: everything goes on to ``log`` (the real stderr, the step's
    log file); a progress bar's refreshes also go to ``console`` as short lines, at most one per ``interval``
    seconds, and always the first and the last (n = total)."""

    def __init__(self, log, console, label: str, interval: float = BAR_INTERVAL_S, clock=time.monotonic):
        self.log, self.console, self.label, self.interval, self.clock = log, console, label, interval, clock
        self._last = -math.inf

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        n = self.log.write(text)
        for part in re.split(r"[\r\n]", text):
            line = bar_line(part) if part.strip() else None
            if line is None:
                continue
            done = re.search(r" (\d+)/\1 ", line) is not None
            now = self.clock()
            if done or now - self._last >= self.interval:
                self._last = now
                try:
                    self.console.write(f"[{self.label}] {short(line)}\n")
                except (OSError, ValueError):
                    pass
        return n

    def flush(self) -> None:
        self.log.flush()

    def fileno(self) -> int:
        return self.log.fileno()

    def isatty(self) -> bool:
        return False


def _written(out: Path) -> int:
    """Bytes written so far to ``out``'s temporary files (``cytoagg.io.files.atomic_path`` names them
    ``.<name>.<random>.tmp`` beside it; a folder's files count too)."""
    total = 0
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            total += tmp.stat().st_size if tmp.is_file() else sum(
                f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        except OSError:
            pass
    return total


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def heartbeat_line(seconds: float, written: int, source_bytes: int) -> str:
    minutes = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"running for {minutes}: {written / 2**30:.2f} GB written so far (the source is {source_bytes / 2**30:.2f} GB)"


class Heartbeat:
    """A thread that writes ``[label] running for N min: X GB written so far`` to the console every ``interval``
    seconds while a plate-sized step runs; nothing for a step shorter than that."""

    def __init__(self, console, label: str, source, out, interval: float = HEARTBEAT_S):
        self.console, self.label, self.interval = console, label, interval
        self.source, self.out = Path(source), Path(out)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cytoagg-heartbeat")

    def _run(self) -> None:
        start, source_bytes = time.monotonic(), _size(self.source)
        while not self._stop.wait(self.interval):
            line = heartbeat_line(time.monotonic() - start, _written(self.out), source_bytes)
            try:
                self.console.write(f"[{self.label}] {line}\n")
            except (OSError, ValueError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# the steps that read a whole plate: the CLI arguments of their source and output
PLATE_STEPS = {"ingest": ("source", "out"), "normalize": ("src", "out")}


@contextmanager
def console_progress(args):
    """While one CLI step (``args``: its parsed arguments) runs: its warnings, progress bars and (plate steps) a
    heartbeat on the console, when the workflow gave one (see the module's doc); nothing otherwise."""
    console = console_stream()
    if console is None:
        yield
        return
    label = args.command + (f" {args.plate}" if isinstance(getattr(args, "plate", None), str) else "")
    handler = ConsoleHandler(console, label)
    root = logging.getLogger("cytoagg")
    root.addHandler(handler)
    stderr, sys.stderr = sys.stderr, BarRelay(sys.stderr, console, label)
    beat = Heartbeat(console, label, *(getattr(args, a) for a in PLATE_STEPS[args.command])) \
        if args.command in PLATE_STEPS else None
    try:
        if beat is None:
            yield
        else:
            with beat:
                yield
    finally:
        sys.stderr = stderr
        root.removeHandler(handler)
