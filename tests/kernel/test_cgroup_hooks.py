"""Every family of cgroup hook, deployed from a manifest, with its effect checked inside and outside the cgroup."""

from __future__ import annotations

import json

import pytest

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
char LICENSE[] SEC("license") = "GPL";
"""

# (attach type, SEC, program body, probe code printing a result, expected inside, expected outside)
CASES = {
    "sock_create": (
        "sock_create", "cgroup/sock_create", "struct bpf_sock *sk",
        "if (sk->family == 10 && sk->type == 2) return 0; return 1;",  # deny AF_INET6 + SOCK_DGRAM
        """
import socket
try:
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
    "bind4": (
        "bind4", "cgroup/bind4", "struct bpf_sock_addr *ctx",
        "if (ctx->user_port == bpf_htons(7070)) return 0; return 1;",
        """
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 7070)); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
    "sendmsg4": (
        "sendmsg4", "cgroup/sendmsg4", "struct bpf_sock_addr *ctx",
        "if (ctx->user_port == bpf_htons(8888)) ctx->user_port = bpf_htons(8889); return 1;",
        """
import socket
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 8889)); r.settimeout(0.5)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("127.0.0.1", 8888))
try:
    r.recv(10); print("rewritten")
except socket.timeout:
    print("not rewritten")
""", "rewritten", "not rewritten"),
    "sysctl": (
        "sysctl", "cgroup/sysctl", "struct bpf_sysctl *ctx",
        "if (ctx->write) return 0; return 1;",
        """
import os
value = open("/proc/sys/net/ipv4/ping_group_range").read()  # reads stay allowed
fd = os.open("/proc/sys/net/ipv4/ping_group_range", os.O_WRONLY)
try:
    os.write(fd, value.encode()); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
    "device": (
        "device", "cgroup/dev", "struct bpf_cgroup_dev_ctx *ctx",
        "if (ctx->major == 1 && ctx->minor == 5) return 0; return 1;",  # /dev/zero
        """
try:
    open("/dev/zero", "rb").read(1); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
    "getsockopt": (
        "getsockopt", "cgroup/getsockopt", "struct bpf_sockopt *ctx",
        "if (ctx->level == 1 && ctx->optname == 8) return 0; return 1;",  # SOL_SOCKET, SO_RCVBUF
        """
import socket
s = socket.socket()
try:
    s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
    "setsockopt": (
        "setsockopt", "cgroup/setsockopt", "struct bpf_sockopt *ctx",
        "if (ctx->level == 0 && ctx->optname == 1) return 0; return 1;",  # IPPROTO_IP, IP_TOS
        """
import socket
s = socket.socket()
try:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 16); print("ok")
except PermissionError:
    print("EPERM")
""", "EPERM", "ok"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cgroup_hook_takes_effect_only_inside_the_cgroup(sandbox, case):
    attach, section, arg, body, probe, inside, outside = CASES[case]
    src = sandbox.tmp / "hook.bpf.c"
    src.write_text(HEADER + f'SEC("{section}")\nint hook({arg})\n{{\n    {body}\n}}\n')
    cgroup = sandbox.cgroup(case)
    root = sandbox.pin_root(f"{sandbox.id}-hook")
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-hook
        pin_root: {root}
        objects:
          hook:
            source: {src}
        attachments:
          - program: hook
            type: {attach}
            cgroup: {cgroup}
    """)
    sandbox.cli("apply", manifest)
    netns = sandbox.netns()
    assert sandbox.run_in(probe, cgroup=cgroup, netns=netns).stdout.strip() == inside
    assert sandbox.run_in(probe, netns=netns).stdout.strip() == outside
    links = json.loads(__import__("subprocess").run(["bpftool", "-j", "-f", "link", "show"], capture_output=True,
                                                    text=True).stdout)
    ours = [l for l in links if any(p.startswith(str(root)) for p in l.get("pinned", ()))]
    assert len(ours) == 1 and ours[0]["type"] == "cgroup"
    sandbox.cli("destroy", manifest)
    assert sandbox.run_in(probe, cgroup=cgroup, netns=netns).stdout.strip() == outside  # effect gone


def test_unix_connect_hook_with_a_type_the_section_name_does_not_give(sandbox):
    """libbpf 1.1 does not know SEC("cgroup/connect_unix"): the manifest names the type, and the
    expected attach type comes from the attachment."""
    src = sandbox.tmp / "unix.bpf.c"
    src.write_text(HEADER + 'SEC("cgroup/connect_unix")\nint deny_unix(struct bpf_sock_addr *ctx)\n{\n    return 0;\n}\n')
    cgroup = sandbox.cgroup("unix")
    root = sandbox.pin_root(f"{sandbox.id}-unix")
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-unix
        pin_root: {root}
        objects:
          unix:
            source: {src}
            programs:
              deny_unix: {{type: cgroup_sock_addr}}
        attachments:
          - program: deny_unix
            type: connect_unix
            cgroup: {cgroup}
    """)
    sandbox.cli("apply", manifest)
    replan = sandbox.cli_json("plan", manifest)
    assert replan["changes"] is False, [a for a in replan["actions"] if a["action"] != "no-op"]
    probe = f"""
import socket
srv = socket.socket(socket.AF_UNIX); srv.bind("{sandbox.tmp}/sock"); srv.listen(1)
c = socket.socket(socket.AF_UNIX)
try:
    c.connect("{sandbox.tmp}/sock"); print("ok")
except PermissionError:
    print("EPERM")
"""
    assert sandbox.run_in(probe, cgroup=cgroup).stdout.strip() == "EPERM"
    (sandbox.tmp / "sock").unlink()
    assert sandbox.run_in(probe).stdout.strip() == "ok"
