"""The chaos suite: faults, bad input and hostile LAN peers against a running lab, as a client sees it.

Run (root): .venv/bin/python bench/chaos.py [--quick] [--backends native_vrrp,plain-keepalived] [--json FILE]

Everything happens in the namespace lab (prefix ``vcLc``: three nodes, a
client; 16 dual-stack groups), torn down afterwards, also on Ctrl-C or an
error; every run is bounded in count and time. Per backend, same run:

* **kill**: hard-kill a random holder (every process SIGKILLed, links down),
  wait until each VIP has exactly its expected holder, restart the node.
  Per cycle: echoes lost (the client pings 4 VIPs every 10 ms), split-brain
  seconds *after* convergence (a VIP on two nodes), stale VIPs (a VIP left on
  a node that should not hold it after the restart settled).
* **loss**: random loss of N % of VRRP (IP protocol 112) and liveness (UDP 3784)
  packets with nftables ``numgen random`` rules in every node (the kernel here
  has no netem) for a window: spurious VIP moves (kernel address events).
* **partition**: one holder cut off (nftables drops everything on its eth0)
  for 3 s, then healed: time until every VIP has exactly one holder again.
* **manifests** (vipcore backends): random bytes written into the manifest
  file, then a huge file, then 20 edits per second: echoes lost (target 0).
* **link flap**, **interface gone**: the holder's eth0 down/up; deleted and
  re-created: echoes lost, and whether every VIP has one holder afterwards.
* **SIGSTOP**: the holder frozen for 2 × Master_Down_Interval, then resumed:
  split-brain seconds after it resumes.
* **hostile** (IPv4): adverts spoofed from the client namespace with the
  members' source addresses: priority 255 rotating through the members at
  30/s, and priority 0 "from the master" at 1000/s: echoes lost and moves.

Targets (issue 12): 0 stale VIPs, 0 s split brain after convergence beyond one
Master_Down_Interval, 0 VIP loss from any input or hostile advert, 0 spurious
moves at 2 % loss with 0.1 s adverts.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core.errors import LabError, VipcoreError  # noqa: E402
from vipcore.core.model import IPAddress  # noqa: E402
from vipcore.lab.agents import (  # noqa: E402
    PLAIN_KEEPALIVED,
    Deployment,
    keepalived_command,
    wait_for_holders,
    write_scenario_manifests,
)
from vipcore.lab.monitor import AddressMonitor  # noqa: E402
from vipcore.lab.probe import Probe  # noqa: E402
from vipcore.lab.topology import Lab, require_root  # noqa: E402

PREFIX = "vcLc"
ADVERT = 0.1
GROUPS = 16
LABELS = {"native_vrrp": "native_vrrp", PLAIN_KEEPALIVED: "keepalived (plain)"}
NFT_TABLE = "vipcore_chaos"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else float("nan")


class Rig:
    """One lab, one backend, the 16-group scenario; helpers to observe it."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.lab = Lab(prefix=PREFIX).up()
        self.manifests = write_scenario_manifests(self.lab, self.lab.run_dir / "manifests", GROUPS)
        self.deployment = Deployment(backend=backend, advert_interval=ADVERT, metrics=False, manifests=self.manifests)
        self.deployment.start_all(self.lab)
        self.expected = self.deployment.expected_holders(self.lab.nodes)
        if not self.settle(60):
            raise LabError(f"{backend}: the VIPs did not settle: {self.lab.holders()}")

    def settle(self, timeout: float, quiet: float = 0.5) -> bool:
        return wait_for_holders(self.lab, self.expected, timeout=timeout, quiet=quiet)

    def close(self) -> None:
        self.lab.down()

    def sample_vips(self, count: int = 4) -> list[IPAddress]:
        v4: list[IPAddress] = sorted((v for v in self.expected if v.version == 4), key=int)
        return list(v4[:: max(1, len(v4) // count)][:count])

    @contextmanager
    def probes(self, vips: Sequence[IPAddress]) -> Iterator[list[Probe]]:
        running = [Probe(self.lab.client, str(v)).start() for v in vips]
        try:
            for probe in running:
                probe.wait_replies(5, timeout=5)
            yield running
        finally:
            for probe in running:
                probe.__exit__()

    def split_seconds(self, window: float, step: float = 0.02) -> float:
        """Seconds within ``window`` during which some VIP was on more than one node."""
        split = 0.0
        end = time.monotonic() + window
        while time.monotonic() < end:
            if any(len(nodes) > 1 for nodes in self.lab.holders().values()):
                split += step
            time.sleep(step)
        return split

    def stale(self) -> int:
        holders = self.lab.holders()
        return sum(1 for vip, nodes in holders.items() if vip in self.expected and nodes != [self.expected[vip]])

    def nft(self, node: str, rules: Sequence[str]) -> None:
        path = self.lab.run_dir / f"nft-{node}.conf"
        path.write_text("\n".join([f"table inet {NFT_TABLE} {{", *rules, "}"]) + "\n")
        self.lab.exec(node, ["nft", "-f", str(path)])

    def nft_clear(self, node: str) -> None:
        self.lab.exec(node, ["nft", "delete", "table", "inet", NFT_TABLE], check=False)


# -- the sections ------------------------------------------------------------------------------


def kill_cycles(rig: Rig, cycles: int) -> dict[str, Any]:
    lost: list[int] = []
    split: list[float] = []
    stale: list[int] = []
    failures = 0
    vips = rig.sample_vips()
    for index in range(cycles):
        victim = random.choice(sorted(set(rig.expected.values())))
        survivors = [n for n in rig.lab.nodes if n != victim]
        after = rig.deployment.expected_holders(survivors)
        with rig.probes(vips) as probes:
            started = time.time()
            rig.lab.kill(victim)
            converged = wait_for_holders(rig.lab, after, timeout=10)
            for probe in probes:
                probe.wait_replies(5, after=time.time(), timeout=3)
            results = [p.stop(after=started) for p in probes]
        if not converged:
            failures += 1
        split.append(rig.split_seconds(0.5))
        lost.append(sum(r.lost for r in results))
        rig.deployment.start(rig.lab, victim)
        rig.settle(20)
        stale.append(rig.stale())
        log(f"    kill {index + 1}/{cycles}: {victim}; lost {lost[-1]}, split {split[-1]:.2f} s, stale {stale[-1]}")
    return {"cycles": cycles, "lost_median": statistics.median(lost), "lost_p95": p95(lost),
            "split_seconds": sum(split), "stale": sum(stale), "not_converged": failures}


def loss(rig: Rig, percent: int, window: float) -> dict[str, Any]:
    rule = (f"chain out {{ type filter hook output priority 0; policy accept; "
            f"meta l4proto 112 numgen random mod 100 < {percent} drop; "
            f"udp dport 3784 numgen random mod 100 < {percent} drop; }}")
    for node in rig.lab.nodes:
        rig.nft(node, [rule])
    try:
        with AddressMonitor(rig.lab) as monitor:
            time.sleep(window)
        moves = len(monitor.events)
    finally:
        for node in rig.lab.nodes:
            rig.nft_clear(node)
    rig.settle(20)
    return {"percent": percent, "window": window, "moves": moves}


def partition(rig: Rig) -> dict[str, Any]:
    victim = rig.expected[rig.sample_vips(1)[0]]
    rig.nft(victim, ['chain in { type filter hook input priority 0; policy accept; iifname "eth0" drop; }',
                     'chain out { type filter hook output priority 0; policy accept; oifname "eth0" drop; }'])
    time.sleep(3.0)
    healed = time.monotonic()
    rig.nft_clear(victim)
    converged = rig.settle(30, quiet=0.0)
    took = time.monotonic() - healed
    return {"node": victim, "heal_to_one_holder_s": took if converged else None}


def manifests(rig: Rig) -> dict[str, Any]:
    target = rig.manifests / "services.yaml"
    good = target.read_bytes()
    out: dict[str, Any] = {}
    vips = rig.sample_vips()
    for name, action in (
        ("garbage", lambda: target.write_bytes(os.urandom(3000))),
        ("huge", lambda: target.write_bytes(good + b"\n---\n" + b"".join(
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c%d, namespace: x}\ndata: {k: v}\n---\n" % i
            for i in range(20000)))),
        ("rapid edits", lambda: _rapid_edits(target, good)),
    ):
        with rig.probes(vips) as probes:
            started = time.time()
            action()
            time.sleep(3.0)
            target.write_bytes(good)
            time.sleep(1.0)
            results = [p.stop(after=started) for p in probes]
        out[name] = {"lost": sum(r.lost for r in results),
                     "one_holder_each": rig.settle(10, quiet=0.2)}
        log(f"    manifests {name}: {out[name]}")
    return out


def _rapid_edits(target: Path, good: bytes) -> None:
    end = time.monotonic() + 5
    n = 0
    while time.monotonic() < end:
        target.write_bytes(good + f"\n# edit {n}\n".encode())
        n += 1
        time.sleep(0.05)


def link_events(rig: Rig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vips = rig.sample_vips()
    for name, commands in (
        ("link flap", ["link set eth0 down", "link set eth0 up"]),
        ("interface gone", None),
    ):
        holder = rig.expected[vips[0]]
        with rig.probes(vips) as probes:
            started = time.time()
            if commands is not None:
                rig.lab.batch(rig.lab.ns(holder), commands[:1])
                time.sleep(0.5)
                rig.lab.batch(rig.lab.ns(holder), commands[1:])
                rig.lab.links_up(holder)
            else:
                _recreate_eth0(rig, holder)
            back = rig.settle(20, quiet=0.3)
            results = [p.stop(after=started) for p in probes]
        out[name] = {"lost": sum(r.lost for r in results), "one_holder_each": back,
                     "longest_gap_ms": max(r.longest_gap_ms for r in results)}
        log(f"    {name}: {out[name]}")
    return out


def _recreate_eth0(rig: Rig, node: str) -> None:
    """Move the node's eth0 peer away and back: the interface disappears and comes back with a new ifindex."""
    ns = rig.lab.ns(node)
    parked = f"{PREFIX}-park"
    subprocess.run(["ip", "netns", "add", parked], check=False, capture_output=True)
    try:
        rig.lab.batch(ns, [f"link set eth0 netns {parked}"])
        time.sleep(0.5)
        subprocess.run(["ip", "-n", parked, "link", "set", "eth0", "netns", ns], check=True, capture_output=True)
        rig.lab.links_up(node)
    finally:
        subprocess.run(["ip", "netns", "del", parked], check=False, capture_output=True)


def sigstop(rig: Rig) -> dict[str, Any]:
    holder = rig.expected[rig.sample_vips(1)[0]]
    records = rig.lab.records(holder)
    mdi = 3 * ADVERT + ADVERT
    for record in records:
        os.kill(record.pid, signal.SIGSTOP)
    time.sleep(2 * mdi)
    for record in records:
        os.kill(record.pid, signal.SIGCONT)
    resumed = time.monotonic()
    split = rig.split_seconds(1.0)
    converged = rig.settle(20, quiet=0.3)
    return {"node": holder, "split_after_resume_s": split, "one_holder_each": converged,
            "resumed_to_settled_s": time.monotonic() - resumed}


def hostile(rig: Rig) -> dict[str, Any]:
    from vipcore_native_vrrp.protocol.packet import Advertisement, encode

    resolution, _ = rig.deployment.state()
    group = max(resolution.groups, key=lambda g: len(g.vips_v4))
    vip = group.vips_v4[0]
    members = [rig.lab.address(n) for n in rig.lab.nodes]
    master = rig.lab.address(rig.expected[vip])
    dst = ipaddress.IPv4Address("224.0.0.18")
    out: dict[str, Any] = {}
    for name, sources, priority, rate, seconds in (
        ("priority 255 from members", members, 255, 30, 3.0),
        ("priority 0 from the master", [master], 0, 1000, 2.0),
    ):
        packets = [_ipv4(src, dst, encode(Advertisement(vrid=group.vrid or 1, priority=priority, interval_cs=10,
                                                          addresses=group.vips_v4), src, dst)) for src in sources]
        with rig.probes([vip]) as probes, AddressMonitor(rig.lab) as monitor:
            started = time.time()
            _flood(rig.lab, packets, rate, seconds)
            time.sleep(0.5)
            results = [p.stop(after=started) for p in probes]
        out[name] = {"lost": sum(r.lost for r in results), "moves": len(monitor.events),
                     "one_holder_each": rig.settle(10, quiet=0.2)}
        log(f"    hostile {name}: {out[name]}")
    return out


def _ipv4(src: IPAddress, dst: IPAddress, payload: bytes) -> bytes:
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, 255, 112
    header[2:4] = (20 + len(payload)).to_bytes(2, "big")
    header[12:16], header[16:20] = src.packed, dst.packed
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + payload


def _flood(lab: Lab, packets: list[bytes], rate: int, seconds: float) -> None:
    """Send ``packets`` round-robin at ``rate`` per second from the client namespace (raw, IP_HDRINCL)."""
    program = (
        "import socket,sys,time\n"
        "pk=[bytes.fromhex(x) for x in sys.argv[3:]]\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n"
        "s.setsockopt(socket.SOL_SOCKET,25,b'eth0')\n"
        "rate=float(sys.argv[1]);end=time.monotonic()+float(sys.argv[2]);i=0\n"
        "while time.monotonic()<end:\n"
        "  s.sendto(pk[i%len(pk)],('224.0.0.18',0));i+=1;time.sleep(1/rate)\n"
    )
    lab.exec(None, [sys.executable, "-c", program, str(rate), str(seconds), *[p.hex() for p in packets]])


# -- driver ----------------------------------------------------------------------------------------


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rig = Rig(backend)
    try:
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("kill", lambda: kill_cycles(rig, args.cycles)),
            ("loss 2%", lambda: loss(rig, 2, args.window)),
            ("loss 10%", lambda: loss(rig, 10, args.window)),
            ("partition", lambda: partition(rig)),
            ("link", lambda: link_events(rig)),
            ("sigstop", lambda: sigstop(rig)),
        ]
        if backend != PLAIN_KEEPALIVED:
            sections += [("manifests", lambda: manifests(rig)), ("hostile", lambda: hostile(rig))]
        for name, section in sections:
            if not rig.settle(20, quiet=0.3):
                # A fault the last section left behind must not count against this one.
                log(f"    the lab did not settle after the last section ({rig.lab.holders()}); rebuilding it")
                rig.close()
                rig = Rig(backend)
            log(f"{LABELS[backend]}: {name}")
            try:
                out[name] = section()
            except (LabError, VipcoreError, subprocess.CalledProcessError, OSError) as exc:
                out[name] = {"error": str(exc).splitlines()[0][:200]}
                log(f"    {name}: error {out[name]['error']}; rebuilding the lab")
                rig.close()
                rig = Rig(backend)
    finally:
        rig.close()
    return out


def report(data: dict[str, dict[str, Any]]) -> str:
    lines = []
    for backend, sections in data.items():
        lines.append(f"== {LABELS[backend]} (16 dual-stack groups, 3 nodes, adverts every {ADVERT:g} s)")
        for name, result in sections.items():
            lines.append(f"{name:<12} {json.dumps(result, default=str)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 kill cycles, 30 s loss windows (a smoke run)")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--window", type=float, default=600.0, help="seconds of each loss window (default 600)")
    parser.add_argument("--backends", default=f"native_vrrp,{PLAIN_KEEPALIVED}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.window = min(args.cycles, 10), min(args.window, 30.0)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    data: dict[str, dict[str, Any]] = {}
    try:
        require_root()
        if shutil.which("nft") is None:
            raise LabError("nft is not installed (apt-get install nftables; `make setup` does it as root)")
        for backend in args.backends.split(","):
            if backend == PLAIN_KEEPALIVED:
                try:
                    keepalived_command()
                except LabError as exc:
                    log(f"skipping {backend}: {exc}")
                    continue
            data[backend] = run(backend, args)
    except KeyboardInterrupt:
        Lab(prefix=PREFIX).down()
        log("interrupted; lab torn down; what was measured so far:")
    except VipcoreError as exc:
        Lab(prefix=PREFIX).down()
        log(f"chaos: error: {exc}")
        print(report(data))
        return 2
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
