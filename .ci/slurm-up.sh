#!/usr/bin/env bash
# Start a real single-node Slurm on this machine (root, Debian 12, no systemd) for the `slurm` tests:
# Debian's slurmctld + slurmd + munge, no accounting (jobs are followed with squeue, see
# tests/test_slurm.py). Recipe and traps: ../shared/notes/slurm_local.md.
#
# Records what it started and wrote in $STATE ("pid <pid file>", "file <config file>"), so that
# .ci/slurm-down.sh stops exactly those daemons and removes those files. If a Slurm already answers
# here, it leaves it alone and starts nothing.
#
# Why the config files go too: the Slurm executor plugin asks `scontrol show config` whenever snakemake
# starts (even for local runs); with a slurm.conf naming a controller that is not running, that call
# hangs ~10 s, which every later snakemake command on this machine would pay.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
STATE=${CYTOAGG_SLURM_STATE:-/run/cytoagg-ci-slurm.pids}  # .ci/run sets its own

wait_for() { local n=$(($1 * 4)); shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep .25; done; echo "timeout: $*" >&2; return 1; }

if command -v sinfo >/dev/null && timeout 10 sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    echo "slurm-up: a Slurm is already running here; using it as it is"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (installs packages, starts daemons)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "slurm-up: no apt-get (not Debian/Ubuntu)" >&2; exit 1; }

if [ -f /etc/slurm/slurm.conf ] && ! grep -q "written by cytoagg .ci/slurm-up.sh" /etc/slurm/slurm.conf; then
    echo "slurm-up: /etc/slurm/slurm.conf exists and is not ours: not touching this machine's Slurm" >&2
    exit 1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
: >"$STATE"
# a failure from here on undoes what was done (daemons started, config written)
trap 'echo "slurm-up: failed; undoing" >&2; bash "$(dirname "$0")/slurm-down.sh"' ERR

# munge (Debian's postinst creates /etc/munge/munge.key)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || {
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    }
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    echo "pid /run/munge/munged.pid" >>"$STATE"
    wait_for 10 sh -c 'munge -n | unmunge'
fi

# slurm.conf: this host as controller and only node (CPUs and memory as slurmd sees them)
H=$(hostname -s)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
NODE=$(slurmd -C | head -1 | sed "s/RealMemory=[0-9]*/RealMemory=$((MEM > 2048 ? MEM - 1024 : MEM))/")
install -d /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /etc/slurm
# A fake "gpu" GRES: 2 "cards" backed by /dev/null and /dev/zero (Slurm drops GPUs without a device file).
# Jobs asking for --gpus (profiles/slurm does for train and embed) are scheduled as on a GPU cluster;
# there is no real card, so torch runs on the CPU.
echo "file /etc/slurm/gres.conf" >>"$STATE"
printf '%s\n' "# written by cytoagg .ci/slurm-up.sh" "Name=gpu File=/dev/null,/dev/zero" >/etc/slurm/gres.conf
echo "file /etc/slurm/slurm.conf" >>"$STATE"
cat >/etc/slurm/slurm.conf <<EOC
# written by cytoagg .ci/slurm-up.sh
ClusterName=localci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
# squeue keeps finished jobs this long: the executor asks squeue for job states (>= 3x its init delay),
# and tests/test_slurm.py checks every job of a run in it afterwards
MinJobAge=3600
KillWait=5
$NODE Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOC

echo "pid /run/slurmctld.pid" >>"$STATE"
slurmctld -c # -c: clean state
echo "pid /run/slurmd.pid" >>"$STATE"
slurmd
wait_for 30 sh -c 'sinfo -h -o %t | grep -qx idle'
sinfo
