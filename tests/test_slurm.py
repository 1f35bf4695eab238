"""Running on Slurm: the profiles' resources (dry runs, no Slurm needed) and the tiny config end to end on
a real Slurm (marker ``slurm``).

The real run needs a Slurm that answers ``sinfo`` here; .ci/run starts a single-node one with
.ci/slurm-up.sh (root, Debian) and sets CYTOAGG_REQUIRE_SLURM=1, so that in CI a Slurm that was started
but cannot be reached fails instead of skipping. Elsewhere the test skips and says why.

Every rule job becomes its own sbatch job (the executor plugin runs snakemake again inside it through
srun); the test checks each one against Slurm's own record and compares the tables with the local
``--cores 2`` run (``tiny_reference_run``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import assert_same_results, copy_workflow, snakemake

pytestmark = pytest.mark.slow

# rules that run in the submitting snakemake on a cluster: they read tables and well profiles, never cells
LIGHT_RULES = {
    "config_used", "synthetic_platemap", "summarize_sampling_sweep", "summarize_saliency", "front_page", "plot_map",
    "plot_pr_curves", "plot_training", "plot_cells_per_well", "plot_effective_rank", "plot_sampling_sweep",
    "plot_saliency_correlation",
}
SLURM_TIMEOUT = 900  # seconds for the whole run (SIGKILL: snakemake ignores SIGTERM while it waits on jobs)


def dry_run_jobs(wd: Path, *args: str) -> list[dict]:
    """Jobs of ``snakemake -n``: rule, wildcards, resources (name -> value string) and shell command."""
    out = snakemake(wd, "-n", "--printshellcmds", *args).stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out):
        m = re.match(r"(?:local)?rule (\w+):\n", block)
        if not m:
            continue
        job = {"rule": m.group(1), "resources": {}, "shell": ""}
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if res:
            for item in res.group(1).split(", "):
                key, _, value = item.partition("=")
                job["resources"][key] = value
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if shell:
            job["shell"] = shell.group(1)
        jobs.append(job)
    return jobs


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory, tiny_reference_run) -> Path:
    """A copy of the finished reference run: dry runs see real input sizes and plan only what is forced."""
    wd = tmp_path_factory.mktemp("slurmdry") / "wf"
    shutil.copytree(tiny_reference_run, wd, symlinks=True, ignore=shutil.ignore_patterns("report.html"))
    return wd


# --- profiles and resources (no Slurm needed) -----------------------------------------------------------


def test_slurm_profile_gives_every_job_partition_memory_runtime_and_gpu_where_asked(workflow_copy):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the slurm extra: pip install -e '.[slurm]'")
    jobs = dry_run_jobs(workflow_copy, "--profile", "profiles/slurm", "--forceall")
    rules = {j["rule"] for j in jobs}
    assert {"ingest", "normalize", "train", "embed", "evaluate", "summarize"} <= rules
    for job in jobs:
        if job["rule"] == "all":
            continue
        res = job["resources"]
        # profiles/default (the workflow profile, loaded too) must not replace the Slurm default-resources
        assert res.get("slurm_partition") == "debug", job
        assert int(res["mem_mb"]) >= 500 and int(res["runtime"]) >= 5, job
        assert res.get("gpu", "0") == ("1" if job["rule"] in ("train", "embed", "saliency") else "0"), job


def test_gpu_only_when_the_config_uses_cuda(workflow_copy):
    def gpus(device: str) -> dict[str, set[str]]:
        jobs = dry_run_jobs(workflow_copy, "--forceall", "--config", f"train={{'device': '{device}'}}")
        rules = ("train", "embed", "saliency", "ingest")
        return {rule: {j["resources"].get("gpu", "0") for j in jobs if j["rule"] == rule} for rule in rules}

    assert gpus("cuda") == {"train": {"1"}, "embed": {"1"}, "saliency": {"1"}, "ingest": {"0"}}
    assert gpus("cpu") == {"train": {"0"}, "embed": {"0"}, "saliency": {"0"}, "ingest": {"0"}}


def test_threads_follow_cores(workflow_copy):
    """--threads of every step (BLAS/torch threads in the job) is the rule's threads, capped by --cores."""
    for cores, train_threads in (("1", "1"), ("2", "2")):
        jobs = dry_run_jobs(workflow_copy, "--forceall", "--cores", cores)
        for job in jobs:
            for value in re.findall(r"--threads (\S+)", job["shell"]):
                # train, train_on_means: train.threads (2 in the tiny config); ingest and normalize: 2; the others 1; all capped by --cores
                declared = {"train": 2, "train_on_means": 2, "ingest": 2, "normalize": 2}.get(job["rule"], 1)
                expected = str(min(declared, int(cores)))
                assert value == expected, (cores, job["rule"], job["shell"])
    train = [j for j in dry_run_jobs(workflow_copy, "--forceall", "--cores", "8", "--set-threads", "train=6")
             if j["rule"] == "train"]
    assert "--threads 6" in train[0]["shell"]


def test_memory_and_runtime_grow_with_the_input(workflow_copy):
    """A plate 8x a real one asks for more memory and time; the others keep the floors."""
    big = workflow_copy / "results" / "normalized" / "P2.parquet"
    size = big.stat().st_size
    stat = big.stat()
    try:
        with open(big, "r+b") as f:  # sparse: no disk used; dry runs only look at the size
            f.truncate(8 * 2**30)
        os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        jobs = dry_run_jobs(workflow_copy, "--forcerun", "embed", "aggregate", "--until", "embed")
    finally:
        with open(big, "r+b") as f:
            f.truncate(size)
        os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    embed = {j["shell"].split("--plate ")[1].split()[0]: j["resources"] for j in jobs if j["rule"] == "embed"}
    assert int(embed["P2"]["mem_mb"]) >= 8 * 1024 and int(embed["P2"]["runtime"]) >= 80, embed["P2"]
    assert int(embed["P1"]["mem_mb"]) == 1500 and int(embed["P1"]["runtime"]) == 10, embed["P1"]


def test_local_gpu_cap_runs_gpu_jobs_one_at_a_time(workflow_copy):
    """profiles/default's `resources: gpu: 1`: two GPU jobs never run together on this machine."""

    def embed_events(*args: str) -> list[str]:
        targets = ["results/profiles/model/P1.parquet", "results/profiles/model/P2.parquet"]
        proc = snakemake(workflow_copy, *targets, "--cores", "2", "--set-resources", "embed:gpu=1", *args,
                         "--forcerun", "embed")
        log = proc.stdout + proc.stderr
        return re.findall(r"^(?:local)?rule embed:|^Finished jobid: \d+ \(Rule: embed\)", log, re.M)

    def max_running(events: list[str]) -> int:
        running = peak = 0
        for e in events:
            running += 1 if "rule embed:" in e else -1
            peak = max(peak, running)
        return peak

    assert max_running(embed_events()) == 1
    assert max_running(embed_events("--resources", "gpu=2")) == 2  # unless asked


# --- a real Slurm -------------------------------------------------------------------------------------


def slurm_problem() -> str | None:
    """Why the real Slurm run cannot happen here, or None."""
    for tool in ("sbatch", "squeue", "sinfo", "srun"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if states.returncode != 0:
        return f"sinfo failed: {states.stderr.strip()[:300]}"
    if not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return f"no usable Slurm node (states: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    problem = slurm_problem()
    if problem:
        message = f"no Slurm here: {problem}. .ci/run starts one with .ci/slurm-up.sh (as root, Debian)."
        if os.environ.get("CYTOAGG_REQUIRE_SLURM") == "1":
            pytest.fail(message + " CYTOAGG_REQUIRE_SLURM=1: Slurm was started, so this is an error.")
        pytest.skip(message)
    partition = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()
    default = next((p.rstrip("*") for p in partition if p.endswith("*")), partition[0].rstrip("*"))
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    wd = copy_workflow(tmp_path_factory.mktemp("slurm"))
    args = [
        "--profile", "profiles/slurm",
        # no slurmdbd in CI: job states from squeue (MinJobAge in slurm.conf >= 3 x the init delay)
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
    ]
    # The profile as shipped, where this Slurm allows it; otherwise its partition and no GPU.
    if default != "debug" or "gpu" not in gres:
        gpu = "1" if "gpu" in gres else "0"
        args += ["--default-resources", f"slurm_partition={default}", "mem_mb=2000", "runtime=60",
                 "--set-resources", *(f"{r}:{k}" for r in ("train", "embed") for k in (f"slurm_partition={default}", f"gpu={gpu}"))]
    cmd = ["timeout", "-s", "KILL", str(SLURM_TIMEOUT), sys.executable, "-m", "snakemake", *args,
           "--configfile", "tiny.yaml"]
    log = wd / "snakemake-slurm.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=wd, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        subprocess.run(["scancel", "--name", run_id(text) or "-"], capture_output=True)
        pytest.fail(f"snakemake under Slurm failed (rc={proc.returncode}; 137: killed after {SLURM_TIMEOUT} s):\n"
                    f"{text[-6000:]}")
    return wd, text


def run_id(log: str) -> str | None:
    m = re.search(r"SLURM run ID: (\S+)", log)
    return m.group(1) if m else None


@pytest.mark.slurm
def test_every_job_ran_as_its_own_slurm_job(slurm_run):
    wd, log = slurm_run
    finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))
    # the target rule has no command, and the light rules (`localrule: True`: tables of tables, plots) run in the
    # submitting snakemake; nothing that reads cells may
    local = Counter(re.findall(r"^localrule (\w+):", log, flags=re.M))
    assert set(local) == LIGHT_RULES | {"all"}, set(local) ^ (LIGHT_RULES | {"all"})
    assert all(local[r] == finished[r] for r in local), (local, finished)
    finished -= local
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    assert sum(finished.values()) == len(submitted) > 30, (finished, len(submitted))
    ids = [i for i, _ in submitted]
    assert len(set(ids)) == len(ids)

    # Slurm's record of each job: COMPLETED, named by this run, commented with its rule
    uuid = run_id(log)
    rows = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%j|%T|%k", "-j", ",".join(ids)],
                          capture_output=True, text=True, check=True).stdout.split()
    record = {r.split("|")[0]: r.split("|")[1:] for r in rows}
    assert set(record) == set(ids), f"jobs Slurm no longer lists (MinJobAge?): {set(ids) - set(record)}"
    rules = Counter()
    for jobid in ids:
        name, state, comment = record[jobid]
        assert (name, state) == (uuid, "COMPLETED"), (jobid, record[jobid])
        rules[re.match(r"rule_(\w+?)(?:_wildcards_|$)", comment).group(1)] += 1
    assert rules == finished

    # each job's Slurm log: written by Slurm under the job's id, the rule run inside it by the jobstep executor
    for jobid, path in submitted:
        slurm_log = Path(path)
        assert slurm_log.name == f"{jobid}.log" and slurm_log.is_relative_to(wd / ".snakemake" / "slurm_logs")
        text = slurm_log.read_text(errors="replace")
        assert "--executor slurm-jobstep" in text and "Finished jobid" in text, slurm_log


@pytest.mark.slurm
def test_gpu_jobs_asked_slurm_for_a_gpu(slurm_run):
    wd, log = slurm_run
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu" not in gres:
        pytest.skip("this Slurm has no gpu GRES")
    submitted = dict((p, i) for i, p in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", log))
    for path, jobid in submitted.items():
        rule = Path(path).relative_to(wd / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        tres = subprocess.run(["scontrol", "show", "job", jobid], capture_output=True, text=True).stdout
        assert ("gres/gpu" in tres or "gres:gpu" in tres) == (rule in ("train", "embed", "saliency")), (rule, tres)


@pytest.mark.slurm
def test_slurm_tables_equal_the_local_run(slurm_run, tiny_reference_run):
    wd, _ = slurm_run
    assert_same_results(wd, tiny_reference_run)
