#!/usr/bin/env bash
# Record the bpftool JSON fixtures of tests/unit/scenarios.py (test_plan.py, test_apply.py) again from this machine's kernel.
#
#   sudo bash scripts/record-fixtures.sh
#
# It builds objects from bpf/ with clang into a temporary directory and loads a small scratch
# deployment with bpftool itself (plus a few bpf_links made through libbpf with ctypes, since
# bpftool 7.1 cannot create cgroup or sockmap links), reads `bpftool -j -f prog|map|link show`
# and writes the parts that concern the scratch objects into tests/fixtures/bpftool/.
# Everything it creates is removed again on exit, also when a step fails. It refuses to run
# when any of its scratch names already exists, so it never unpins, detaches or removes
# anything it did not create.
#
# The scratch deployment (pin root $scratch/deploy, the layout bpfdeploy uses):
#   maps/   traffic, sock_ops_map, redir_stats, blocked_ports (key 9 = 1), port_rewrites, policy_stats
#   progs/  count_ingress, count_egress, sockops, sockredir, connect_policy,
#           count_ingress__bpfdeploy_new (a staged pin left over from an "interrupted apply")
#   links/  ingress    count_ingress  on $cgroup ingress
#           egress     count_egress   on $cgroup egress, then detached: defunct (cgroup_id 0)
#           sockops    sockops        on $cgroup sock_ops
#           connect    connect_policy on $cgroup connect4
#           redirect   sockredir      msg_verdict on maps/sock_ops_map (a sockmap link)
#           old-egress count_egress   on $cgroup/old egress (a link no manifest wants any more)
# Outside the pin root, in the same scratch directory:
#   foreign/count_ingress + foreign/link-ingress   another "owner's" program linked on $cgroup ingress
#   deploy-lookalike                               the foreign program pinned a second time at a path
#                                                  that shares the pin root's prefix
#   flow/count_dissect                             flow dissector attached (legacy) in netns $netns;
#                                                  `net show -j` there prints bpftool 7.1's invalid JSON
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/tests/fixtures/bpftool
scratch=/sys/fs/bpf/bpfdeploy-fixtures
root=$scratch/deploy
netns=bpfdeploy-fixtures

die() { echo "record-fixtures: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it loads and attaches BPF programs)"
for tool in bpftool clang ip nsenter; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || die "python3 not found"
[ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || die "bpffs is not mounted on /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)"
cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$cg2" ] || die "no cgroup v2 mount"
cgroup=$cg2/bpfdeploy-fixtures

# Refuse to touch anything that is already there: it is not ours.
[ ! -e "$scratch" ] || die "$scratch exists; remove it first if it is a leftover of this script"
[ ! -e "$cgroup" ] || die "$cgroup exists; remove it first if it is a leftover of this script"
[ ! -e "/var/run/netns/$netns" ] || die "netns $netns exists; remove it first if it is a leftover of this script"

tmp=$(mktemp -d)
made_scratch=0 made_cgroup=0 made_old_cgroup=0 made_netns=0 flow_attached=0

cleanup() {
  local rc=$?
  set +e
  if [ "$flow_attached" = 1 ]; then
    nsenter --net="/var/run/netns/$netns" bpftool prog detach pinned "$scratch/flow/count_dissect" flow_dissector
  fi
  [ "$made_netns" = 1 ] && ip netns del "$netns"
  # Unpinning a link detaches it; unpinning a program frees it once nothing holds it.
  [ "$made_scratch" = 1 ] && rm -rf "$scratch"
  [ "$made_old_cgroup" = 1 ] && rmdir "$cgroup/old"
  [ "$made_cgroup" = 1 ] && rmdir "$cgroup"
  rm -rf "$tmp"
  if [ "$rc" != 0 ]; then echo "record-fixtures: failed (rc $rc); scratch state removed" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bpftool prints a "libbpf strict mode" warning on stderr for some commands; keep it quiet.
bt() { bpftool "$@" 2>"$tmp/bpftool.err" || { cat "$tmp/bpftool.err" >&2; return 1; }; }

# A pinned bpf_link through libbpf (ctypes): PROG_PIN TARGET(cgroup dir or map pin) ATTACH_TYPE LINK_PIN
make_link() {
  "$py" - "$@" <<'EOF'
import ctypes, os, sys
lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
prog, target, attach_type, pin = sys.argv[1:5]
def check(rc, what):
    if rc < 0:
        sys.exit(f"{what}: {os.strerror(-rc)}")
    return rc
prog_fd = check(lib.bpf_obj_get(prog.encode()), f"open {prog}")
if os.path.isdir(target):
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
else:
    target_fd = check(lib.bpf_obj_get(target.encode()), f"open {target}")
link_fd = check(lib.bpf_link_create(prog_fd, target_fd, int(attach_type), None), f"link {prog} to {target}")
check(lib.bpf_obj_pin(link_fd, pin.encode()), f"pin {pin}")
EOF
}

# --- build
arch_inc=/usr/include/$(uname -m)-linux-gnu
build() {  # SOURCE OUTPUT
  clang -O2 -g -target bpf -I"$arch_inc" -c "$here/bpf/$1" -o "$tmp/$2"
}
build cgroup-counters/counters.bpf.c counters.o
build sockmap-redirect/sockops.bpf.c sockops.o
build sockmap-redirect/sockredir.bpf.c sockredir.o
build connect-policy/connect4.bpf.c policy.o
build flow-dissector/flow_dissector.bpf.c flow.o
# The BTF of an object (map key/value fields, for tests/unit/test_metrics_checks.py): a file read.
mkdir -p "$here/tests/fixtures/btf"
bpftool -j btf dump file "$tmp/counters.o" > "$here/tests/fixtures/btf/counters.json"

# --- scratch cgroups and netns
mkdir "$cgroup"; made_cgroup=1
mkdir "$cgroup/old"; made_old_cgroup=1
ip netns add "$netns"; made_netns=1

# --- load (bpftool)
mkdir "$scratch"; made_scratch=1
mkdir -p "$root/maps" "$root/progs" "$root/links" "$scratch/foreign" "$scratch/flow" "$scratch/tmp-maps"
bt prog loadall "$tmp/counters.o" "$root/progs" pinmaps "$root/maps"
bt prog load "$tmp/sockops.o" "$root/progs/sockops" pinmaps "$root/maps"
# sockredir reuses the pinned sock_ops_map; pinmaps into maps/ would collide with it.
bt prog load "$tmp/sockredir.o" "$root/progs/sockredir" \
  map name sock_ops_map pinned "$root/maps/sock_ops_map" pinmaps "$scratch/tmp-maps"
mv "$scratch/tmp-maps/redir_stats" "$root/maps/redir_stats"
rm -rf "$scratch/tmp-maps"
bt prog loadall "$tmp/policy.o" "$root/progs" pinmaps "$root/maps"
bt map update pinned "$root/maps/blocked_ports" key 9 0 0 0 value 1 0 0 0
bt map update pinned "$root/maps/port_rewrites" key 0x61 0x1e 0 0 value 0x62 0x1e 0 0   # 7777 -> 7778
# A staged program an interrupted apply left behind (bpftool pins the object's first program).
bt prog load "$tmp/counters.o" "$root/progs/count_ingress__bpfdeploy_new"
# Another owner's program, pinned outside the pin root and at a look-alike path.
bt prog load "$tmp/counters.o" "$scratch/foreign/count_ingress"
bt prog pin pinned "$scratch/foreign/count_ingress" "$scratch/deploy-lookalike"
bt prog load "$tmp/flow.o" "$scratch/flow/count_dissect"

# --- links (libbpf): attach types 0 ingress, 1 egress, 3 sock_ops, 7 msg_verdict, 10 connect4
make_link "$root/progs/count_ingress" "$cgroup" 0 "$root/links/ingress"
make_link "$root/progs/count_egress" "$cgroup" 1 "$root/links/egress"
make_link "$root/progs/sockops" "$cgroup" 3 "$root/links/sockops"
make_link "$root/progs/connect_policy" "$cgroup" 10 "$root/links/connect"
make_link "$root/progs/sockredir" "$root/maps/sock_ops_map" 7 "$root/links/redirect"
make_link "$root/progs/count_egress" "$cgroup/old" 1 "$root/links/old-egress"
make_link "$scratch/foreign/count_ingress" "$cgroup" 0 "$scratch/foreign/link-ingress"
bt link detach pinned "$root/links/egress"   # defunct: still pinned, attached nowhere

# --- flow dissector in the scratch netns (no addresses anywhere)
nsenter --net="/var/run/netns/$netns" bpftool prog attach pinned "$scratch/flow/count_dissect" flow_dissector \
  2>"$tmp/bpftool.err" || { cat "$tmp/bpftool.err" >&2; exit 1; }
flow_attached=1

# --- read
bpftool -j -f prog show >"$tmp/prog.json"
bpftool -j -f map show >"$tmp/map.json"
bpftool -j -f link show >"$tmp/link.json"
nsenter --net="/var/run/netns/$netns" bpftool -j net show >"$tmp/net.txt"

# --- keep what concerns the scratch objects (the host may run other BPF programs), pretty-printed
mkdir -p "$out"
SCRATCH=$scratch ROOT=$root CGROUP=$cgroup OUT=$out TMP=$tmp NETNS=$netns "$py" - <<'EOF'
import json, os, platform, subprocess
scratch, out, tmp = os.environ["SCRATCH"], os.environ["OUT"], os.environ["TMP"]
ours = lambda item: any(p == scratch or p.startswith(scratch + "/") for p in item.get("pinned", ()))
load = lambda name: json.load(open(os.path.join(tmp, name)))
links = [l for l in load("link.json") if ours(l)]
prog_ids = {l["prog_id"] for l in links}
progs = [p for p in load("prog.json") if ours(p) or p["id"] in prog_ids]
map_ids = {i for p in progs for i in p.get("map_ids", ())}
maps = [m for m in load("map.json") if ours(m) or m["id"] in map_ids]
def write(name, data):
    with open(os.path.join(out, name), "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
write("prog-show.json", progs)
write("map-show.json", maps)
write("link-show.json", links)
net = open(os.path.join(tmp, "net.txt")).read()
with open(os.path.join(out, "net-show-flow-dissector.txt"), "w") as fh:
    fh.write(net if net.endswith("\n") else net + "\n")
version = subprocess.run(["bpftool", "version"], capture_output=True, text=True).stdout.splitlines()[0]
write("meta.json", {
    "recorded_with": version, "kernel": platform.release(),
    "scratch": scratch, "pin_root": os.environ["ROOT"],
    "cgroup": os.environ["CGROUP"], "cgroup_id": os.stat(os.environ["CGROUP"]).st_ino,
    "old_cgroup": os.environ["CGROUP"] + "/old", "old_cgroup_id": os.stat(os.environ["CGROUP"] + "/old").st_ino,
    "netns_ino": os.stat("/var/run/netns/" + os.environ["NETNS"]).st_ino,
})
print(f"record-fixtures: {len(progs)} programs, {len(maps)} maps, {len(links)} links -> {out}")
EOF
