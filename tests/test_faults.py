"""Faults: snakemake killed mid-step and mid-training, half-written files, hostile plate names and paths.

The crash tests run the tiny config in a copy of the workflow as far as the trained model, kill it with SIGKILL
at a chosen moment, rerun it with --rerun-incomplete, and compare the model (tensor by tensor) and the normalized
plates with an uninterrupted run (``tiny_reference_run``, CPU, same seed): every later step reads only those.

Which kill? ``kill -9 -PGID`` of snakemake's process group is a real crash (machine or session lost, OOM,
scancel of an allocation): the job dies with snakemake, mid-write, and training must resume from its last
epoch. That is the harder case and the one tested first. Killing the snakemake process alone leaves its
running job behind as an orphan that finishes on its own while the rerun redoes the same job; that is
tested for a per-plate step (both writers rename whole files onto the same name).

To kill "in the middle" deterministically, the group is first frozen with SIGSTOP the moment the condition
holds (a per-plate step's temporary file exists; the training log shows epochs done), inspected while
frozen (what a reader would see at that instant), then killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from cytoagg.io.files import atomic_path
from cytoagg.cli import named_file_args
from cytoagg.model.checkpoint import load_checkpoint
from helpers import REPO, copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.slow


class Run:
    """``snakemake --cores 2`` on the tiny config, in its own process group (its jobs are in it too)."""

    count = 0
    started: list[Run] = []

    def __init__(self, wd: Path, *args: str):
        Run.count += 1
        Run.started.append(self)
        self.wd = wd
        self.log = wd / f"snakemake-{Run.count}.log"
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", "tiny.yaml"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=wd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = self.proc.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_until(self, condition, what: str, timeout: float = 300):
        """Poll ``condition`` every 5 ms; it returns a truthy value once the moment has come."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = condition()
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"snakemake exited (rc={self.proc.returncode}) before {what}:\n{self.tail()}")
            time.sleep(0.005)
        self.kill_group()
        pytest.fail(f"timed out waiting for {what}:\n{self.tail()}")

    def freeze(self):
        os.killpg(self.pgid, signal.SIGSTOP)

    def thaw(self):
        os.killpg(self.pgid, signal.SIGCONT)

    def kill_group(self):
        """A real crash: snakemake and every job it started die at once."""
        os.killpg(self.pgid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        end = time.monotonic() + 10
        while group_members(self.pgid) and time.monotonic() < end:
            time.sleep(0.05)
        assert not group_members(self.pgid), "processes of the killed snakemake survived"

    def kill_snakemake_only(self, thaw: bool = True):
        """SIGKILL to the snakemake process alone: its running jobs live on as orphans (still frozen
        with the group unless ``thaw``)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        if thaw:
            self.thaw()

    def finish(self, timeout: float = 600) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            pytest.fail(f"snakemake did not finish in {timeout} s:\n{self.tail()}")
        assert rc == 0, self.tail()


@pytest.fixture(autouse=True)
def no_run_left_behind():
    """A failed test must not leave a frozen or running snakemake (or its jobs) behind."""
    yield
    while Run.started:
        run = Run.started.pop()
        if group_members(run.pgid):
            os.killpg(run.pgid, signal.SIGKILL)
        if run.proc.poll() is None:
            run.proc.wait(timeout=30)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def temporary_files(results: Path, pattern: str) -> list[Path]:
    return sorted(results.glob(pattern))


def visible_parquets_are_whole(results: Path) -> int:
    """Read every Parquet a reader can see under its final name in full; returns how many."""
    files = [p for p in results.rglob("*.parquet") if not p.name.startswith(".")]
    for p in files:
        pq.read_table(p)  # raises on a truncated or half-written file
    return len(files)


def unlock(wd: Path) -> None:
    """After a crash snakemake's lock stays behind; the user removes it (README: snakemake --unlock)."""
    snakemake(wd, "--unlock")


# The crash tests run as far as the trained model: every step up to it crashes and resumes here, and the model
# is the one input of everything after it that a crash could change (compared tensor by tensor).
TRAINED = ("results/model/model.pt",)


def assert_same_model(wd: Path, reference: Path) -> None:
    """The model and the training plates' normalized cells equal the reference run's, exactly."""
    got, ref = (load_checkpoint(d / "results/model/model.pt") for d in (wd, reference))
    assert got["state_dict"].keys() == ref["state_dict"].keys() and got["epoch"] == ref["epoch"]
    for name, tensor in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
    for plate in ("P1", "P2"):  # the training plates (the validation plate is not normalized before the model)
        rel = f"results/normalized/{plate}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(wd / rel), pd.read_parquet(reference / rel), check_exact=True)


def test_crash_mid_step_and_mid_training_then_rerun_incomplete(tmp_path, tiny_reference_run):
    wd = copy_workflow(tmp_path)
    results = wd / "results"

    # 1. Crash while a per-plate step writes its Parquet.
    run = Run(wd, *TRAINED)

    def normalize_writing():
        tmp = temporary_files(results, "normalized/.*.parquet.*.tmp")
        if not tmp:
            return None
        run.freeze()
        tmp = temporary_files(results, "normalized/.*.parquet.*.tmp")
        if not tmp:  # it finished between the two looks: let it go on, wait for the next plate
            run.thaw()
            return None
        return tmp

    writing = run.wait_until(normalize_writing, "a normalize job writing its output")
    plate = writing[0].name.split(".")[1]  # .P2.parquet.abc123.tmp -> P2
    # what a reader sees at this instant: no file under the final name, every visible Parquet whole
    assert not (results / "normalized" / f"{plate}.parquet").exists()
    assert visible_parquets_are_whole(results) >= 1
    run.kill_group()
    assert not (results / "normalized" / f"{plate}.parquet").exists()
    # The other job running at that moment (--cores 2) died too; if it had just renamed its output, that
    # file is whole but Snakemake never recorded it as done, so it is marked incomplete: the README's
    # --rerun-incomplete redoes exactly such jobs.
    assert "normalize" in planned_jobs(wd, "--rerun-incomplete", *TRAINED)

    # 2. Rerun; crash again in the middle of training, once the log shows epochs done.
    unlock(wd)
    run = Run(wd, "--rerun-incomplete", *TRAINED)
    state = results / "model" / "resume_state.pt"

    def training_some_epochs():
        """Freeze once the resume state (written atomically after every epoch) says 2 epochs are done."""
        if not state.exists():
            return None
        run.freeze()
        epoch = torch.load(state, map_location="cpu", weights_only=True)["epoch"]
        if epoch >= 1:
            return epoch + 1
        run.thaw()
        return None

    done = run.wait_until(training_some_epochs, "training to save 2 epochs")
    epochs = yaml.safe_load((wd / "tiny.yaml").read_text())["train"]["epochs"]
    assert (results / "normalized" / f"{plate}.parquet").exists()
    assert not (results / "model" / "model.pt").exists(), "training finished before it could be stopped"
    assert 2 <= done < epochs
    visible_parquets_are_whole(results)
    run.kill_group()

    # 3. Rerun to the model: training resumes after its last saved epoch; the same model as without crashes.
    unlock(wd)
    run = Run(wd, "--rerun-incomplete", *TRAINED)
    run.finish()
    train_log = (results / "logs" / "train.log").read_text(errors="replace")
    assert f"resuming from epoch {done}" in train_log, train_log[-2000:]
    history = pd.read_csv(results / "model" / "training_log.csv")
    assert list(history.epoch) == list(range(epochs))
    assert not state.exists()
    assert_same_model(wd, tiny_reference_run)
    assert planned_jobs(wd, *TRAINED) == {}
    # the killed writers' temporary files are hidden names that no "*.parquet" glob or rule input matches
    for leftover in results.rglob("*.tmp"):
        assert leftover.name.startswith("."), leftover


def test_snakemake_killed_alone_its_orphan_job_and_the_rerun_both_write_whole_files(tmp_path, tiny_reference_run):
    """kill -9 of snakemake alone: the ingest job it ran lives on and the immediate rerun redoes it."""
    wd = copy_workflow(tmp_path)
    results = wd / "results"
    targets = [f"results/normalized/{p}.parquet" for p in ("P1", "P2", "P3")]
    run = Run(wd, *targets)

    def ingest_writing():
        if temporary_files(results, "ingested/.*.parquet.*.tmp"):
            run.freeze()
            if temporary_files(results, "ingested/.*.parquet.*.tmp"):
                return True
            run.thaw()
        return None

    run.wait_until(ingest_writing, "an ingest job writing its output")
    run.kill_snakemake_only()
    assert group_members(run.pgid), "the running job should outlive snakemake"

    # the user reruns at once, while the orphan still writes the same output
    unlock(wd)
    rerun = Run(wd, "--rerun-incomplete", *targets)
    rerun.finish()
    end = time.monotonic() + 60
    while group_members(run.pgid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not group_members(run.pgid)
    for step in ("ingested", "normalized"):
        for plate in ("P1", "P2", "P3"):
            rel = f"results/{step}/{plate}.parquet"
            pd.testing.assert_frame_equal(pd.read_parquet(wd / rel), pd.read_parquet(tiny_reference_run / rel))


def test_snakemake_killed_alone_mid_training_the_rerun_waits_for_the_orphan_trainer(tmp_path, tiny_reference_run):
    """kill -9 of snakemake alone while it trains: the orphaned trainer and the rerun's trainer would share
    the resume state; the rerun's waits on the training lock instead, and the model comes out the same."""
    wd = copy_workflow(tmp_path)
    results = wd / "results"
    state = results / "model" / "resume_state.pt"
    run = Run(wd, *TRAINED)

    def training_some_epochs():
        if not state.exists():
            return None
        run.freeze()
        if torch.load(state, map_location="cpu", weights_only=True)["epoch"] >= 1:
            return True
        run.thaw()
        return None

    run.wait_until(training_some_epochs, "training to save 2 epochs")
    run.kill_snakemake_only(thaw=False)  # the orphaned trainer stays frozen, holding the lock, until the rerun trains
    assert group_members(run.pgid), "the trainer should outlive snakemake"

    unlock(wd)
    rerun = Run(wd, "--rerun-incomplete", *TRAINED)
    train_log = results / "logs" / "train.log"
    def rerun_trainer_waiting():
        try:  # the rerun replaces the old job's log before its trainer starts
            return "held by another process" in train_log.read_text(errors="replace")
        except FileNotFoundError:
            return False

    rerun.wait_until(rerun_trainer_waiting, "the rerun's trainer to wait")
    run.thaw()
    rerun.finish()
    end = time.monotonic() + 60
    while group_members(run.pgid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not group_members(run.pgid)
    train_log = (results / "logs" / "train.log").read_text(errors="replace")
    assert "held by another process" in train_log, train_log[-2000:]
    assert_same_model(wd, tiny_reference_run)
    assert planned_jobs(wd, *TRAINED) == {}


def test_atomic_path_shows_nothing_until_done_and_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert not target.exists()
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")
    assert target.read_bytes() == b"half"

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"broken")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"half"  # the old file, untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"]


# --- hostile names -------------------------------------------------------------------------------------

BAD_NAMES = ["P1/../x", "a b", "a..b", ".hidden", "x;rm -rf y", "$(touch PWNED)", "a`id`", "a'b", "a|b", "a\nb"]


@pytest.mark.parametrize(
    "split, name",
    [("train", "P1/../x"), ("train", "a b"), ("validation", "a..b"), ("train", "x;touch PWNED"), ("validation", "$(touch PWNED)")],
)
def test_bad_plate_names_in_config_are_rejected_before_any_job(tmp_path, split, name):
    wd = copy_workflow(tmp_path)
    plates = {"train": ["P1"], "validation": ["P2"]}
    plates[split].append(name)
    (wd / "bad.yaml").write_text(yaml.safe_dump({"plates": plates}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "tiny.yaml", "bad.yaml"],
        cwd=wd, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"['plates']['{split}']" in out and name in out, out[-2000:]  # names the key and the value
    assert not (wd / "results").exists()
    assert not list(wd.rglob("PWNED"))


def test_bad_plate_names_in_targets_are_rejected_before_any_job(tmp_path):
    wd = copy_workflow(tmp_path)
    for name in ["a b", "a..b", "$(touch PWNED)"]:
        proc = snakemake(wd, "--cores", "1", f"results/normalized/{name}.parquet", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, name
        assert "MissingRuleException" in out or "No rule to produce" in out, (name, out[-2000:])
        assert not (wd / "results").exists(), name
        assert not (wd / "PWNED").exists()


def test_plate_name_rule_is_one_regex(tmp_path):
    """The schema's pattern, the config check and the {plate} wildcard constraint agree."""
    from cytoagg.config import PLATE_NAME, ConfigError, check_plate_name

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    for split in ("train", "validation"):
        assert schema["properties"]["plates"]["properties"][split]["items"]["pattern"] == f"^{PLATE_NAME}$"
    assert "plate=PLATE_NAME" in (REPO / "workflow/rules/common.smk").read_text()
    for good in ("P1", "BR00116991", "SQ00015201.A", "plate_1-b.2"):
        check_plate_name(good, "plates.train")
    for bad in BAD_NAMES + ["P1.", ""]:
        with pytest.raises(ConfigError, match="plates.train"):
            check_plate_name(bad, "plates.train")


SHELL_PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


GENERATED = re.compile(r"\{(named_file_args\([^{}]*\))\}")


def _expand_f_string(text: str) -> str:
    """An f-string literal as Snakemake receives it: its generated file lists (cytoagg.cli.named_file_args, which
    writes ``{input.NAME:q}`` per name) filled in for two methods, and its doubled braces made single."""
    names = {"named_file_args": named_file_args, "METHODS": ["model", "mean"], "BASELINES": ["mean"],
             "CONTROLS": ["model_untrained"], "PROFILES": ["model__raw", "mean__negcon_mad"],
             "FILE_PROFILES": ["model__raw", "mean__raw"], "SEARCH": ["t000", "t001"]}
    text = GENERATED.sub(lambda m: eval(m.group(1), names).replace("{", "\0").replace("}", "\1"), text)
    assert not re.search(r"(?<!\{)\{(?!\{)", text.replace("{{", "")), f"an f-string expression this test cannot read: {text!r}"
    return text.replace("{{", "{").replace("}}", "}").replace("\0", "{").replace("\1", "}")


def shell_commands(smk: str) -> list[str]:
    """The string literals of every ``shell:`` block of a rules file, f-strings expanded."""
    commands = []
    for block in re.finditer(r"^\s+shell:\n((?:\s+(?:f?\"[^\n]*\"|f?'[^\n]*')\n)+)", smk, re.M):
        parts = re.findall(r"(f?)\"((?:[^\"\\]|\\.)*)\"", block.group(1))
        commands.append("".join(_expand_f_string(text) if f else text for f, text in parts))
    return commands


def test_every_shell_command_quotes_its_fields():
    """Paths, wildcards and params enter shell commands only through ``:q`` (shlex-quoted);
    the only unquoted fields are numbers Snakemake computes (threads, resources)."""
    checked = 0
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        commands = shell_commands(smk.read_text())
        assert len(commands) == smk.read_text().count("shell:"), f"{smk.name}: a shell block this test cannot read"
        for cmd in commands:
            for field in SHELL_PLACEHOLDER.findall(cmd):
                checked += 1
                assert field.endswith(":q") or field == "threads" or field.startswith("resources."), (
                    f"{smk.name}: unquoted {{{field}}} in shell command {cmd!r}"
                )
    assert checked > 50


def test_paths_with_spaces_and_shell_metacharacters_run(tmp_path):
    """A results folder named like a shell injection is just a folder name to every rule."""
    wd = copy_workflow(tmp_path)
    weird = "out dir/$(touch PWNED);'x`touch PWNED2`|y"
    (wd / "weird.yaml").write_text(yaml.safe_dump({"results": weird}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", "weird.yaml", "--",
         f"{weird}/normalized/P1.parquet"],
        cwd=wd, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert pq.read_table(wd / weird / "normalized" / "P1.parquet").num_rows > 0
    assert not list(wd.rglob("PWNED*"))
