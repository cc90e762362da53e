#!/usr/bin/env bash
# A simulated SSH fleet on this one machine, for the Ansible tests and bench-fleet
# (recipe: shared/FLEET.md, with the changes described in tests/fleet/README.md).
#
#   bash scripts/fleet.sh up   [N] [PREFIX]   create hosts PREFIX1..PREFIXN (existing ones are rebuilt); prints the inventory
#   bash scripts/fleet.sh down [N] [PREFIX]   remove them and everything made for them (idempotent)
#
# Host i: its own network namespace (eth0, NET.(4i-2)/30), mount namespace (own /run, own bpffs on
# /sys/fs/bpf, own /var/lib/bpfdeploy and /var/cache/bpfdeploy), UTS and cgroup namespace rooted at
# <cgroup2>/PREFIXi, and its own sshd. The other end of each veth lives in the controller namespace
# PREFIX-ctl: no address is ever added in the machine's root network namespace. Run ssh and
# ansible-playbook as `nsenter --net=/run/netns/PREFIX-ctl …` (env.sh defines fleet_ctl for that).
#
# Settings (environment): FLEET_DIR (default /tmp/PREFIX), FLEET_NET (first three octets, default
# 10.214.0), FLEET_PYTHON (the hosts' ansible_python_interpreter, default this tree's .venv/bin/python),
# FLEET_NOCLANG (host numbers whose mount namespace hides clang, e.g. "3"), FLEET_NOBTF (host numbers
# whose /sys/kernel/btf is an empty tmpfs: "a host without kernel BTF"), FLEET_PIPELINING
# (default False). Nothing is killed by name: only recorded pids, after an identity check, and
# cgroup.kill on a host's own cgroup.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}
n=${2:-3}
prefix=${3:-bpfleet}
FLEET_DIR=${FLEET_DIR:-/tmp/$prefix}
FLEET_NET=${FLEET_NET:-10.214.0}
FLEET_PYTHON=${FLEET_PYTHON:-$here/.venv/bin/python}
FLEET_NOCLANG=${FLEET_NOCLANG:-}
FLEET_NOBTF=${FLEET_NOBTF:-}
FLEET_PIPELINING=${FLEET_PIPELINING:-False}
ctl="$prefix-ctl"

die() { echo "fleet: $*" >&2; exit 1; }

cgroup2() {
  awk '$3 == "cgroup2" {print $2; exit}' /proc/self/mounts
}

# Is PID alive and not a zombie? (PID 1 here reaps orphans only after 1-2 s: a zombie is gone for us.)
alive() {
  local pid=$1 state
  [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

# Kill PID only if its command line contains NEEDLE (identity check: pids are reused).
kill_checked() {
  local pid=$1 needle=$2 i
  [ -n "$pid" ] && alive "$pid" || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do alive "$pid" || return 0; sleep 0.02; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Remove a cgroup and the cgroups below it (deployments create some), deepest first.
remove_cgroup() {
  local cg=$1 d i
  [ -d "$cg" ] || return 0
  [ -e "$cg/cgroup.kill" ] && echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
  for i in $(seq 100); do
    [ -z "$(cat "$cg/cgroup.procs" 2>/dev/null)" ] && break
    sleep 0.02
  done
  find "$cg" -mindepth 1 -depth -type d 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  for i in $(seq 100); do rmdir "$cg" 2>/dev/null && return 0; [ -d "$cg" ] || return 0; sleep 0.02; done
  echo "fleet: warning: could not remove cgroup $cg" >&2
}

host_down() {
  local name=$1 hdir="$FLEET_DIR/hosts/$1" cg
  cg="$(cgroup2)/$name"
  if [ -d "$FLEET_DIR/cp" ]; then
    for sock in "$FLEET_DIR"/cp/*; do
      [ -S "$sock" ] || continue
      ssh -o ControlPath="$sock" -O exit dummy >/dev/null 2>&1 || true
    done
  fi
  if [ -d "$hdir" ]; then
    kill_checked "$(cat "$hdir/sshd.pid" 2>/dev/null || true)" "$hdir/sshd_config"
    kill_checked "$(cat "$hdir/holder.pid" 2>/dev/null || true)" "$name-holder"
  fi
  remove_cgroup "$cg"
  ip netns del "$name" 2>/dev/null || true
  rm -rf "$hdir"
}

# Runs as the holder, inside the host's new mount, UTS and cgroup namespaces and its netns.
holder_stage() {
  local name=$1 hdir=$2 noclang=$3 nobtf=$4 m
  hostname "$name"
  # Copies of other namespaces' nsfs mounts and /run/netns: not this host's business.
  for m in $(awk '$3 == "nsfs" {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" 2>/dev/null || true; done
  umount -l /run/netns 2>/dev/null || true
  mount -t tmpfs -o mode=0755 "$name-run" /run
  mkdir -p /run/sshd /run/lock /run/ansible
  : >/run/utmp
  umount -l /sys
  mount -t sysfs sysfs /sys            # this netns's /sys/class/net, and no view of the machine's bpffs
  mount -t bpf -o mode=0700 bpf /sys/fs/bpf
  if [ "$nobtf" = 1 ]; then
    # A host without kernel BTF (the kernel is shared: this hides it from this host's view only).
    mount -t tmpfs -o mode=0755 "$name-nobtf" /sys/kernel/btf
  fi
  mount -t tmpfs -o mode=0755 "$name-cg" /sys/fs/cgroup
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified   # from inside the cgroup ns: only this host's subtree
  for f in wtmp btmp lastlog; do mount --bind "$hdir/$f" "/var/log/$f"; done
  mount --bind "$hdir/bashrc" /root/.bashrc
  mount --bind "$hdir/state" /var/lib/bpfdeploy
  mount --bind "$hdir/cache" /var/cache/bpfdeploy
  if [ "$noclang" = 1 ]; then
    # A host without clang: the compiler is hidden in this host's mount namespace only.
    mount --bind /dev/null "$(readlink -f "$(command -v clang)")"
  fi
  : >"$hdir/ready"
  exec -a "$name-holder" sleep infinity
}

host_up() {
  local i=$1 name="$prefix$1" hdir="$FLEET_DIR/hosts/$prefix$1" cg base noclang=0 nobtf=0 pid
  cg="$(cgroup2)/$name"
  base=$(( 4 * i - 4 ))
  local vm_ip="$FLEET_NET.$(( base + 1 ))" host_ip="$FLEET_NET.$(( base + 2 ))"
  host_down "$name"
  case " $FLEET_NOCLANG " in *" $i "*) noclang=1 ;; esac
  case " $FLEET_NOBTF " in *" $i "*) nobtf=1 ;; esac
  mkdir -p "$hdir/state" "$hdir/cache"
  : >"$hdir/wtmp"; : >"$hdir/btmp"; : >"$hdir/lastlog"; : >"$hdir/bashrc"
  ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$hdir/host_key"
  echo "$host_ip $(cut -d' ' -f1,2 "$hdir/host_key.pub")" >>"$FLEET_DIR/known_hosts"

  ip netns add "$name"
  ip -n "$ctl" link add "$name-r" type veth peer name eth0 netns "$name"
  ip -n "$ctl" link set "$name-r" up
  ip -n "$ctl" addr add "$vm_ip/30" dev "$name-r"
  ip -n "$name" link set lo up
  ip -n "$name" link set eth0 up
  ip -n "$name" addr add "$host_ip/30" dev eth0

  mkdir -p "$cg"
  # The holder joins its cgroup before `unshare --cgroup`: the namespace root is the current cgroup.
  setsid bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$cg" \
    nsenter --net="/run/netns/$name" unshare --mount --uts --cgroup --propagation private \
    bash "$here/scripts/fleet.sh" __holder "$name" "$hdir" "$noclang" "$nobtf" \
    </dev/null >"$hdir/holder.log" 2>&1 &
  pid=$!
  echo "$pid" >"$hdir/holder.pid"
  for _ in $(seq 250); do [ -e "$hdir/ready" ] && break; alive "$pid" || break; sleep 0.02; done
  [ -e "$hdir/ready" ] || die "host $name did not come up: $(cat "$hdir/holder.log")"

  cat >"$hdir/sshd_config" <<EOF
ListenAddress $host_ip:22
HostKey $hdir/host_key
PidFile $hdir/sshd.pid
PermitRootLogin prohibit-password
AuthorizedKeysFile $FLEET_DIR/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  nsenter -t "$pid" --mount -- /usr/sbin/sshd -t -f "$hdir/sshd_config" || die "sshd_config of $name is invalid"
  # sshd joins the host's cgroup before entering its cgroup ns (else sessions see 0::/.. paths).
  bash -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' _ "$cg" \
    nsenter -t "$pid" --net --mount --uts --cgroup -- /usr/sbin/sshd -f "$hdir/sshd_config" -E "$hdir/sshd.log" \
    </dev/null
  for _ in $(seq 250); do [ -s "$hdir/sshd.pid" ] && break; sleep 0.02; done
  [ -s "$hdir/sshd.pid" ] || die "sshd of $name did not start: $(cat "$hdir/sshd.log" 2>/dev/null)"
  echo "$name ansible_host=$host_ip fleet_holder_pid=$pid fleet_clang=$([ $noclang = 1 ] && echo false || echo true)"\
" fleet_btf=$([ $nobtf = 1 ] && echo false || echo true)" \
    >>"$FLEET_DIR/hosts.ini"
}

up() {
  command -v /usr/sbin/sshd >/dev/null || die "openssh-server is not installed (bash scripts/bootstrap.sh fleet)"
  [ ${#prefix} -le 10 ] || die "prefix '$prefix' is longer than 10 characters (interface names)"
  [ "$n" -ge 1 ] && [ "$n" -le 63 ] || die "N must be 1..63"
  down >/dev/null
  mkdir -p "$FLEET_DIR/hosts" "$FLEET_DIR/cp" "$FLEET_DIR/ansible-home/tmp" /var/lib/bpfdeploy /var/cache/bpfdeploy
  chmod 700 "$FLEET_DIR"
  [ -d /run/netns ] || { mkdir -p /run/netns; : >"$FLEET_DIR/created-run-netns"; }
  ssh-keygen -q -t ed25519 -N '' -C "$prefix-controller" -f "$FLEET_DIR/id_ed25519"
  cp "$FLEET_DIR/id_ed25519.pub" "$FLEET_DIR/authorized_keys"
  : >"$FLEET_DIR/known_hosts"; : >"$FLEET_DIR/hosts.ini"
  ip netns add "$ctl"
  ip -n "$ctl" link set lo up
  for i in $(seq "$n"); do host_up "$i"; done
  local ssh_args="-o UserKnownHostsFile=$FLEET_DIR/known_hosts -o GlobalKnownHostsFile=/dev/null"
  ssh_args+=" -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=5"
  ssh_args+=" -o ServerAliveInterval=2 -o ServerAliveCountMax=3"
  {
    echo "[fleet]"
    cat "$FLEET_DIR/hosts.ini"
    echo
    echo "[fleet:vars]"
    echo "ansible_connection=ssh"
    echo "ansible_user=root"
    echo "ansible_ssh_private_key_file=$FLEET_DIR/id_ed25519"
    echo "ansible_python_interpreter=$FLEET_PYTHON"
    echo "ansible_remote_tmp=/run/ansible"
    echo "ansible_ssh_common_args=$ssh_args"
  } >"$FLEET_DIR/inventory.ini"
  cat >"$FLEET_DIR/ansible.cfg" <<EOF
[defaults]
inventory = $FLEET_DIR/inventory.ini
home = $FLEET_DIR/ansible-home
local_tmp = $FLEET_DIR/ansible-home/tmp
collections_path = $here/ansible/collections
retry_files_enabled = False
forks = 10
[ssh_connection]
control_path_dir = $FLEET_DIR/cp
pipelining = $FLEET_PIPELINING
EOF
  cat >"$FLEET_DIR/env.sh" <<EOF
export ANSIBLE_CONFIG=$FLEET_DIR/ansible.cfg ANSIBLE_HOME=$FLEET_DIR/ansible-home
fleet_ctl() { nsenter --net=/run/netns/$ctl "\$@"; }
fleet_host() { local h=\$1; shift; nsenter -t "\$(cat $FLEET_DIR/hosts/\$h/holder.pid)" -n -m -u -C "\$@"; }
EOF
  cat "$FLEET_DIR/inventory.ini"
}

down() {
  local i name
  # Every host of this prefix, whatever N was when they were made.
  for name in $( { ls "$FLEET_DIR/hosts" 2>/dev/null; ip netns list 2>/dev/null | awk '{print $1}' \
                   | grep -E "^$prefix[0-9]+$"; for i in $(seq "$n"); do echo "$prefix$i"; done; } | sort -u); do
    host_down "$name"
    echo "removed $name"
  done
  ip netns del "$ctl" 2>/dev/null || true
  if [ -e "$FLEET_DIR/created-run-netns" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    umount /run/netns 2>/dev/null || true
    rmdir /run/netns 2>/dev/null || true
  fi
  rm -rf "$FLEET_DIR"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  __holder) holder_stage "$2" "$3" "$4" "$5" ;;
  *) echo "usage: bash scripts/fleet.sh up|down [N] [PREFIX]" >&2; exit 64 ;;
esac
