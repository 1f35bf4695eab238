#!/usr/bin/env bash
# Undo what .ci/slurm-up.sh did, from what it recorded in $STATE: stop the daemons it started by their
# pid files (never by process name), then remove the config files it wrote. Safe to run when nothing
# was started.
STATE=${CYTOAGG_SLURM_STATE:-/run/cytoagg-ci-slurm.pids}  # .ci/run sets its own
[ -s "$STATE" ] || exit 0
grep -q '^pid ' "$STATE" && scancel --user="$(id -un)" 2>/dev/null
# daemons in reverse start order (slurmd, slurmctld, munged)
tac "$STATE" | while read -r kind path; do
    [ "$kind" = pid ] && [ -s "$path" ] || continue
    pid=$(cat "$path")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep .25; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm-down: pid $pid ($path) did not stop; SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null
    fi
done
while read -r kind path; do
    [ "$kind" = file ] && [ -f "$path" ] && grep -q "written by cytoagg .ci/slurm-up.sh" "$path" && rm -f "$path"
done <"$STATE"
: >"$STATE"
exit 0
