"""Do two revisions of cytoagg give the same tables? Runs the workflow of each (a clean `git worktree` of the
revision, the working tree for "WORKTREE") on the same config and compares every file under results/tables/
byte for byte. For refactors that must not change a number.

    python benchmarks/same_tables.py --base HEAD~3                      # the default demo (config.yaml)
    python benchmarks/same_tables.py --base HEAD~3 --configfile tests/tiny_config.yaml
    python benchmarks/same_tables.py --base HEAD~3 --rename map_vs_cells=sampling_sweep
    python benchmarks/same_tables.py --base main --ignore-line '^Model profiles computed in '   # a line added

Not a timed test: each run is the whole workflow (minutes). Exit status 0 when every table is identical.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(revision: str, dest: Path) -> Path:
    if revision == "WORKTREE":
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", "results*", ".snakemake", "__pycache__"))
    else:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(dest), revision], check=True,
                       capture_output=True)
    return dest


def run(workdir: Path, configfile: str | None, cores: int) -> Path:
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores)]
    if configfile:
        shutil.copy(REPO / configfile, workdir / "extra_config.yaml")
        cmd += ["--configfile", "extra_config.yaml"]
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)
    return workdir / "results" / "tables"


def same_text(old: Path, new: Path, ignore: list[str]) -> bool:
    """Equal once the lines matching any of the ``ignore`` regexes (and the blank line after each) are dropped."""
    def kept(path: Path) -> list[str]:
        lines, skip_blank = [], False
        for line in path.read_text().splitlines():
            if any(re.search(p, line) for p in ignore):
                skip_blank = True
                continue
            if not (skip_blank and not line.strip()):
                lines.append(line)
            skip_blank = False
        return lines

    return kept(old) == kept(new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the revision to compare against")
    ap.add_argument("--head", default="WORKTREE", help="the revision to check (default: the working tree)")
    ap.add_argument("--configfile", default=None, help="a config layered on config.yaml, relative to the repo")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--rename", action="append", default=[], help="OLD=NEW: a table renamed between the revisions")
    ap.add_argument("--ignore-line", action="append", default=[],
                    help="REGEX: a text line (with a blank line after it) one revision adds; reported, not counted")
    args = ap.parse_args()
    renames = dict(r.split("=", 1) for r in args.rename)
    with tempfile.TemporaryDirectory() as tmp:
        tables = {}
        for label, revision in (("base", args.base), ("head", args.head)):
            tables[label] = run(checkout(revision, Path(tmp) / label), args.configfile, args.cores)
        different = []
        for old in sorted(tables["base"].iterdir()):
            name = old.name
            for a, b in renames.items():
                name = name.replace(a, b)
            new = tables["head"] / name
            same = new.exists() and filecmp.cmp(old, new, shallow=False)
            note = ""
            if not same and new.exists() and args.ignore_line and old.suffix in (".md", ".txt"):
                same = same_text(old, new, args.ignore_line)
                note = " (but for the ignored lines)" if same else ""
            print(f"{'same' if same else 'DIFFERENT':9} {old.name}" + (f" -> {name}" if name != old.name else "") + note)
            if not same:
                different.append(old.name)
        if args.base != "WORKTREE" or args.head != "WORKTREE":
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
    print(f"{len(different)} table(s) differ" if different else "every table is identical")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
