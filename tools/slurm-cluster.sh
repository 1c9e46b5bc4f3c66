#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, from Debian packages, for tests and local trials (root only).
#   tools/slurm-cluster.sh up     install if needed, start munge, MariaDB, slurmdbd, slurmctld, slurmd (clean state)
#   tools/slurm-cluster.sh down   stop them (PIDs recorded under $STATE/pids)
#   tools/slurm-cluster.sh status
# Partitions: cpu (default) and gpu, both on this node; the node declares one GPU generic resource (gres gpu:1,
# backed by /dev/null: Slurm allocates and accounts it, and sets CUDA_VISIBLE_DEVICES in the job, as a site does).
# Accounting through slurmdbd (gres/gpu tracked), so sacct works as on clusters.
# A machine with a Slurm configuration of its own is left as it is: `up` writes /etc/slurm/{slurm,gres,slurmdbd}.conf
# only where each is absent or was written here (its first line is $MARK), and otherwise exits 3 naming the file.
set -euo pipefail
STATE=${SLURM_LOCAL_STATE:-/var/lib/iteralite-slurm}
PIDS=$STATE/pids
CONF=/etc/slurm   # srun inside jobs ignores SLURM_CONF (the jobstep plugin strips it): the config must live here
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
MARK="# written by iteralite's tools/slurm-cluster.sh (a single-node test cluster)"
CONFIGS=(slurm.conf gres.conf slurmdbd.conf)

log() { echo "[slurm-cluster] $*" >&2; }

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # exit 4 when the packages cannot be had (no network, no Debian mirror): the tests skip with this reason
    apt-get update -qq || { log "cannot install ${missing[*]}: apt-get update failed"; exit 4; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { log "cannot install ${missing[*]}: apt-get install failed"; exit 4; }
  fi
}

wait_for() {  # wait_for <seconds> <command...>
  local limit=$1; shift
  for _ in $(seq $((limit * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "timed out waiting for: $*"; return 1
}

start_bg() {  # start_bg <name> <command...>: run in the background, record its PID
  local name=$1; shift
  "$@" >"$STATE/$name.out" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

refuse_foreign_configs() {  # exit 3 before anything is installed, started or written
  local name
  for name in "${CONFIGS[@]}"; do
    if [ -e "$CONF/$name" ] && [ "$(head -n 1 "$CONF/$name")" != "$MARK" ]; then
      log "$CONF/$name exists and was not written by this script: this machine's own Slurm configuration is left" \
          "as it is, and no test cluster is started"
      exit 3
    fi
  done
}

write_configs() {
  local mem cpus
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys these, set by a caller for its own threads
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$CONF" "$STATE/ctld" "$STATE/d" "$STATE/log"
  cat >"$CONF/slurm.conf" <<CONFEOF
$MARK
ClusterName=iteralite
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
AccountingStoreFlags=job_comment
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONFEOF
  printf '%s\n%s\n' "$MARK" "NodeName=localhost Name=gpu File=/dev/null" >"$CONF/gres.conf"
  cat >"$CONF/slurmdbd.conf" <<CONFEOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONFEOF
  chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  start_bg munged runuser -u munge -- /usr/sbin/munged -F
  wait_for 10 munge -n
}

start_mariadb() {
  local datadir=$STATE/mysql
  mkdir -p "$datadir" && chown mysql:mysql "$datadir"
  mariadb-install-db --user=mysql --datadir="$datadir" >"$STATE/log/mariadb-install.log" 2>&1
  start_bg mariadbd mariadbd --no-defaults --user=mysql --datadir="$datadir" --socket="$datadir/mysqld.sock" \
    --pid-file="$datadir/mariadbd.pid" --bind-address=127.0.0.1 --port=3306
  wait_for 30 mariadb --socket="$datadir/mysqld.sock" -e "select 1"
  mariadb --socket="$datadir/mysqld.sock" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

up() {
  [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
  refuse_foreign_configs
  down >/dev/null 2>&1 || true
  install
  rm -rf "$STATE" && mkdir -p "$PIDS" "$STATE/log"
  write_configs
  start_munge
  start_mariadb
  start_bg slurmdbd slurmdbd -D
  wait_for 30 sacctmgr -n show cluster
  sacctmgr -i add cluster iteralite >/dev/null 2>&1 || true
  start_bg slurmctld slurmctld -D -i
  wait_for 30 bash -c "scontrol ping | grep -q UP"
  start_bg slurmd slurmd -D -N localhost
  wait_for 30 bash -c '[ "$(sinfo -h -p cpu -o %t)" = idle ]'
  log "up: $(sinfo -h -o '%P %t %c cpus %m MB' | tr '\n' ';')"
}

stop_recorded() {  # stop_recorded <name>: the process `up` started under that name, and only it
  local pid
  pid=$(cat "$PIDS/$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDS/$1.pid"
}

down() {  # stops the processes `up` recorded, by PID; never by process name (other Slurm daemons stay untouched)
  [ -d "$PIDS" ] || return 0
  for name in slurmd slurmctld slurmdbd mariadbd munged; do
    [ -f "$PIDS/$name.pid" ] && stop_recorded "$name"
  done
  log "down"
}

status() { sinfo && squeue; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
