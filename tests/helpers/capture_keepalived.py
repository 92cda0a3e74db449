"""Capture real keepalived VRRPv3 adverts (IPv4 and IPv6) for codec vectors.

Run as root: ``.venv/bin/python tests/helpers/capture_keepalived.py``.
Creates two namespaces (vcA-capk, vcA-capr) joined by a veth pair, runs
keepalived in one, reads one advert per family with raw sockets in the
other, prints them as Python literals, and removes everything again.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

K, R = "vcA-capk", "vcA-capr"

CONF = """
global_defs {{ vrrp_version 3 }}
vrrp_instance V4 {{
  state MASTER
  interface eth0
  virtual_router_id 51
  priority 200
  advert_int 0.1
  virtual_ipaddress {{ 198.51.100.100/32
    198.51.100.101/32 }}
}}
vrrp_instance V6 {{
  state MASTER
  interface eth0
  virtual_router_id 52
  priority 150
  advert_int 0.5
  virtual_ipaddress {{ 2001:db8:100::100/128 }}
}}
"""


def enter_netns(name: str) -> None:
    """setns(2) into a named network namespace (os.setns is Python 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="vcA-cap")
    proc = None
    try:
        sh("ip", "netns", "add", K)
        sh("ip", "netns", "add", R)
        sh("ip", "-n", K, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", R)
        for ns, last in ((K, 11), (R, 12)):
            sh("ip", "-n", ns, "addr", "add", f"198.51.100.{last}/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"fe80::{last}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        conf = os.path.join(tmp, "k.conf")
        with open(conf, "w") as f:
            f.write(CONF)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", K, "keepalived", "-n", "-l", "-D", "-f", conf,
             "-p", os.path.join(tmp, "k.pid"), "-r", os.path.join(tmp, "v.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        enter_netns(R)
        s4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 112)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        ifindex = socket.if_nametoindex("eth0")
        s4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      socket.inet_aton("224.0.0.18") + socket.inet_aton("198.51.100.12"))
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                      socket.inet_pton(socket.AF_INET6, "ff02::12") + ifindex.to_bytes(4, sys.byteorder))
        got: dict[int, tuple[bytes, str, str]] = {}
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([s4, s6], [], [], 1)
            for s in ready:
                if s is s4:
                    data = s4.recv(2048)
                    ihl = (data[0] & 0xF) * 4
                    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
                    got.setdefault(4, (data[ihl:], src, dst))
                else:
                    data, anc, _, addr = s6.recvmsg(2048, 256)
                    dst = next(socket.inet_ntop(socket.AF_INET6, d[:16]) for lv, t, d in anc
                               if t == socket.IPV6_PKTINFO)
                    got.setdefault(6, (data, addr[0].split("%")[0], dst))
        for family, (data, src, dst) in sorted(got.items()):
            print(f"IPv{family}: src={src} dst={dst} data=bytes.fromhex({data.hex()!r})")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["ip", "netns", "del", K])
        subprocess.run(["ip", "netns", "del", R])


if __name__ == "__main__":
    main()
