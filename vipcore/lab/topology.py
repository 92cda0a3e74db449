"""The lab's network: namespaces, bridges, veths, and the processes inside them.

Topology (every namespace name starts with ``<prefix>-``; nothing is created
in the root namespace, the host's own interfaces are never touched)::

    <prefix>-sw    switch: bridge "lan" and bridge "dmz" (no snooping, no STP)
    <prefix>-<node>  one per node: eth0 on lan, eth1 on dmz
    <prefix>-cl    client: eth0 on lan (198.51.100.2), eth1 on dmz (203.0.113.2)

Node ``i`` (0-based) gets 198.51.100.(11+i)/24 and 2001:db8:100::(11+i)/64 on
eth0, 203.0.113.(11+i)/24 and 2001:db8:200::(11+i)/64 on eth1 — the
addresses of ``examples/manifests/nodes.yaml``.

Cleanup contract: :meth:`Lab.down` kills every process inside a namespace
whose name starts with ``<prefix>-`` (by PID, from ``ip netns pids``),
deletes those namespaces and the run directory. It is idempotent and needs
no state, so whatever a crash leaves behind, ``down`` removes it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from vipcore.core.errors import LabError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PREFIX = "vclab"
DEFAULT_NODES = ("node-a", "node-b", "node-c")
RUN_ROOT = Path("/run/vipcore-lab")
NETNS_DIR = Path("/run/netns")
#: (L2 network, interface in nodes and client, IPv4 /24, IPv6 /64)
NETWORKS = (
    ("lan", "eth0", "198.51.100.", "2001:db8:100::"),
    ("dmz", "eth1", "203.0.113.", "2001:db8:200::"),
)
CLIENT_HOST = 2
FIRST_NODE_HOST = 11
MAX_NODES = 26
#: Seconds a command of ``ip`` may take before the lab gives up on it.
COMMAND_TIMEOUT = 30.0

# Sysctls of node and client namespaces, set before any interface exists so
# the interfaces inherit them ("default") and the namespace-wide ones apply.
_HOST_SYSCTLS = (
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.ip_nonlocal_bind=1",
    "net.ipv6.ip_nonlocal_bind=1",
)
# The switch forwards frames only; its ports need no IPv6 of their own.
_SWITCH_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes a :class:`LabError` naming it and its stderr."""
    try:
        result = subprocess.run(list(argv), input=stdin, text=True, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"{argv[0]!r} is not installed (the lab needs iproute2)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)} failed: {detail[-1] if detail else 'exit ' + str(result.returncode)}")
    return result


def require_root() -> None:
    """Raise LabError unless this process may create namespaces."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces): run it with sudo")
    if shutil.which("ip") is None:
        raise LabError("the lab needs the 'ip' command: install iproute2")


def namespaces() -> list[str]:
    """Every named network namespace on this machine."""
    out = run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    if not out:
        return []
    try:
        return [str(entry["name"]) for entry in json.loads(out)]
    except (ValueError, KeyError, TypeError):
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    """PIDs of every process whose network namespace is ``ns`` (what ``ip netns pids`` does, in-process)."""
    try:
        target = os.stat(NETNS_DIR / ns)
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # exited meanwhile, or a kernel thread
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


# -- processes ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks (with the PID, identifies it against reuse)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, in seconds."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@attrs.frozen
class ProcessRecord:
    """One process the lab started, persisted so another invocation can stop it."""

    node: str
    name: str
    pid: int
    ticks: int
    log: str

    def alive(self) -> bool:
        """Running (not a zombie) and still the process we started (no PID reuse)."""
        fields = _stat_fields(self.pid)
        return bool(fields) and fields[0] != "Z" and int(fields[19]) == self.ticks  # type: ignore[index]

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ProcessRecord":
        return cls(node=str(data["node"]), name=str(data["name"]), pid=int(data["pid"]),
                   ticks=int(data["ticks"]), log=str(data["log"]))


def _reap(pid: int) -> None:
    """Collect a child of ours that exited, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_and_wait(records: Iterable[ProcessRecord], sig: int, timeout: float) -> list[ProcessRecord]:
    """Send ``sig`` to each live record and wait up to ``timeout``; returns those still alive."""
    pending = [r for r in records if r.alive()]
    for record in pending:
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pending:
        for record in pending:
            _reap(record.pid)
        pending = [r for r in pending if r.alive()]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return pending


# -- the lab --------------------------------------------------------------------

#: Scans of a namespace when freezing it for a hard failure (a round finds the children forked before it).
FREEZE_ROUNDS = 5


@attrs.frozen
class NodeAddressing:
    """Where a lab node (or the client) sits on the two networks."""

    host: int

    def address(self, interface: str, version: int) -> IPAddress:
        for _, name, v4, v6 in NETWORKS:
            if name == interface:
                return ipaddress.ip_address(f"{v4}{self.host}" if version == 4 else f"{v6}{self.host}")
        raise LabError(f"the lab has no interface {interface!r}")

    def interfaces(self) -> Iterator[tuple[str, str, str]]:
        """(interface, IPv4 address/24, IPv6 address/64) per network."""
        for _, name, v4, v6 in NETWORKS:
            yield name, f"{v4}{self.host}/24", f"{v6}{self.host}/64"


@attrs.define
class Lab:
    """One lab instance: its namespaces, processes and run directory.

    ``up()``/``down()`` are idempotent; used as a context manager the lab is
    torn down whatever the body does. State that other invocations need
    (node list, process records, ``meta``) lives in ``<run_dir>/lab.json``.
    """

    prefix: str = DEFAULT_PREFIX
    nodes: tuple[str, ...] = DEFAULT_NODES
    run_root: Path = RUN_ROOT
    #: Free-form facts other modules persist with the lab (backend, manifests, ...).
    meta: dict[str, Any] = attrs.field(factory=dict)
    processes: list[ProcessRecord] = attrs.field(factory=list)
    _popen: dict[int, "subprocess.Popen[bytes]"] = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.prefix or not self.prefix.replace("_", "").isalnum() or len(self.prefix) > 12:
            raise LabError(f"lab prefix {self.prefix!r} must be 1-12 letters, digits or '_'")
        if not 1 <= len(self.nodes) <= MAX_NODES or len(set(self.nodes)) != len(self.nodes):
            raise LabError(f"the lab takes 1-{MAX_NODES} distinct node names, got {list(self.nodes)}")

    # -- names ----------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.prefix

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def client(self) -> str:
        return f"{self.prefix}-cl"

    def ns(self, node: str) -> str:
        """The namespace of ``node`` (raises LabError for an unknown node)."""
        if node not in self.nodes:
            raise LabError(f"no node {node!r} in lab {self.prefix!r} (nodes: {', '.join(self.nodes)})")
        return f"{self.prefix}-{node}"

    def addressing(self, node: str | None) -> NodeAddressing:
        """Host part of ``node``'s addresses; None is the client."""
        if node is None:
            return NodeAddressing(CLIENT_HOST)
        self.ns(node)
        return NodeAddressing(FIRST_NODE_HOST + self.nodes.index(node))

    def address(self, node: str | None, interface: str = "eth0", version: int = 4) -> IPAddress:
        return self.addressing(node).address(interface, version)

    def _port(self, network: str, node: str | None) -> str:
        # Switch-side veth names: "lan0", "dmz12", "lanc" (well under IFNAMSIZ).
        return f"{network}{'c' if node is None else self.nodes.index(node)}"

    def own_namespaces(self) -> list[str]:
        """Namespaces of this prefix that exist now (including leftovers of a crashed run)."""
        return [ns for ns in namespaces() if ns.startswith(f"{self.prefix}-")]

    # -- up / down ------------------------------------------------------------

    def up(self) -> "Lab":
        """Create the topology (after removing leftovers of this prefix). Torn down on any failure."""
        require_root()
        self.down()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.save()
            self._add_namespace(self.switch, _SWITCH_SYSCTLS)
            batch = ["link set lo up"]
            for network, *_ in NETWORKS:
                batch.append(f"link add {network} type bridge stp_state 0 forward_delay 0 mcast_snooping 0")
                batch.append(f"link set {network} up")
            self.batch(self.switch, batch)
            for node in (*self.nodes, None):
                self._add_host(node)
        except BaseException:
            self.down()
            raise
        return self

    def _add_namespace(self, ns: str, sysctls: Sequence[str]) -> None:
        run(["ip", "netns", "add", ns])
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls])

    def _add_host(self, node: str | None) -> None:
        ns = self.client if node is None else self.ns(node)
        self._add_namespace(ns, _HOST_SYSCTLS)
        batch = ["link set lo up"]
        for network, interface, *_ in NETWORKS:
            # Created inside the namespaces: nothing ever appears in the root namespace.
            batch.append(f"link add {interface} type veth peer name {self._port(network, node)} netns {self.switch}")
        self.batch(ns, batch)
        self.batch(self.switch, [
            cmd for network, *_ in NETWORKS
            for cmd in (f"link set {self._port(network, node)} master {network}",
                        f"link set {self._port(network, node)} up")
        ])
        self.links_up(node)

    def links_up(self, node: str | None) -> None:
        """Bring a host's interfaces up and (re)add its addresses (link down flushed the IPv6 ones)."""
        ns = self.client if node is None else self.ns(node)
        batch = []
        for interface, v4, v6 in self.addressing(node).interfaces():
            batch += [f"addr replace {v4} dev {interface}", f"addr replace {v6} dev {interface} nodad",
                      f"link set {interface} up"]
        self.batch(ns, batch)

    def links_down(self, node: str) -> None:
        self.batch(self.ns(node), [f"link set {interface} down" for _, interface, *_ in NETWORKS])

    def down(self) -> None:
        """Kill every process in this prefix's namespaces, delete them and the run directory. Idempotent."""
        for record in self.processes:
            _reap(record.pid)
        own = self.own_namespaces()
        for ns in own:
            for pid in netns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for pid, popen in list(self._popen.items()):
            try:
                popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
            del self._popen[pid]
        for ns in own:
            run(["ip", "netns", "del", ns], check=False)
        self.processes.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        left = self.own_namespaces()
        if left:
            raise LabError(f"could not delete namespace(s) {', '.join(left)}")

    def exists(self) -> bool:
        return self.switch in namespaces()

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- commands inside namespaces -------------------------------------------

    def batch(self, ns: str, commands: Sequence[str]) -> None:
        """Run ``ip`` commands in ``ns`` in one process (``ip -batch``)."""
        run(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(commands) + "\n")

    def exec(self, node: str | None, argv: Sequence[str], *, check: bool = True,
             timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside a node's (None: the client's) namespace."""
        ns = self.client if node is None else self.ns(node)
        return run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout)

    def spawn(self, node: str | None, name: str, argv: Sequence[str], *, log: Path | None = None,
              cwd: Path | None = None) -> ProcessRecord:
        """Start a long-running process inside a namespace; its PID is remembered and persisted.

        The process gets its own session so a Ctrl-C in the terminal reaches
        only the lab's controller, which then tears everything down.
        """
        ns = self.client if node is None else self.ns(node)
        log = log or self.run_dir / f"{node or 'client'}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # `ip netns exec` execs the command after entering the namespace: the PID is the command's.
            popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        ticks = start_ticks(popen.pid)
        if ticks is None:
            popen.wait()
            raise LabError(f"{name} on {node or 'client'} exited at once; see {log}")
        record = ProcessRecord(node=node or "client", name=name, pid=popen.pid, ticks=ticks, log=str(log))
        self._popen[popen.pid] = popen
        self.processes.append(record)
        self.save()
        return record

    def records(self, node: str) -> list[ProcessRecord]:
        return [r for r in self.processes if r.node == node]

    def _forget(self, records: Iterable[ProcessRecord]) -> None:
        gone = set(records)
        self.processes = [r for r in self.processes if r not in gone]
        for record in gone:
            popen = self._popen.pop(record.pid, None)
            if popen is not None:
                popen.poll()
        self.save()

    def stop(self, node: str, timeout: float = 15.0) -> None:
        """Graceful stop: SIGTERM the node's processes, wait, SIGKILL what is left in its namespace."""
        records = self.records(node)
        stubborn = signal_and_wait(records, signal.SIGTERM, timeout)
        if stubborn:
            signal_and_wait(stubborn, signal.SIGKILL, 5.0)
        self._kill_namespace(self.ns(node))
        self._forget(records)

    def kill(self, node: str) -> None:
        """Hard failure: the node's links set down, then every process in its namespace frozen (SIGSTOP),
        then every process SIGKILLed — as if the node lost power: its answers and its packets stop at one
        instant, and none of its processes runs after another one died.

        Killed one after the other (in /proc order, the lower PID first), a process could see another die
        and act before its own turn came: when the native_vrrp liveness worker had the lower PID, its agent
        read the worker's exit and told the peers AdminDown ("not a failure", docs/native-vrrp.md), and
        they waited for VRRP's Master_Down (2-4 s) instead of failing the node over in 50 ms
        (bench/README.md, "Session 8: gap8"). Frozen before the links went down (a /proc scan and an `ip`
        run, 2-25 ms), the node's kernel still answered pings while its liveness worker was silent: the
        peers' detection started before the client's outage and the gap looked shorter than the failure.
        With the links down first, nothing the processes do before they are frozen leaves the node."""
        records = self.records(node)
        self.links_down(node)
        frozen = self._freeze_namespace(self.ns(node))
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_namespace(self.ns(node))  # anything that was not there to freeze
        signal_and_wait(records, signal.SIGKILL, 5.0)
        self._forget(records)

    def _freeze_namespace(self, ns: str) -> list[int]:
        """SIGSTOP every process in ``ns``, again until no new one shows up (a child forked by a process
        before it stopped); the PIDs stopped."""
        frozen: list[int] = []
        for _ in range(FREEZE_ROUNDS):
            new = [pid for pid in netns_pids(ns) if pid not in frozen]
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                frozen.append(pid)
        return frozen

    def _kill_namespace(self, ns: str) -> None:
        for pid in netns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def alive(self, node: str) -> bool:
        return any(r.alive() for r in self.records(node))

    def cpu_seconds(self, node: str) -> float:
        """utime + stime of every process now in the node's namespace (agent, keepalived and children)."""
        return sum(cpu_seconds(pid) or 0.0 for pid in netns_pids(self.ns(node)))

    # -- observation ----------------------------------------------------------

    def addresses(self, node: str, *, up_only: bool = False) -> dict[str, set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """Addresses per interface in a node's namespace (``ip -j addr``); ``up_only``: skip links that are down."""
        out = run(["ip", "-n", self.ns(node), "-j", "addr", "show"]).stdout
        found: dict[str, set[ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = {}
        for link in json.loads(out or "[]"):
            if up_only and "UP" not in link.get("flags", []):
                continue
            entries = found.setdefault(str(link.get("ifname")), set())
            for info in link.get("addr_info", []):
                if info.get("family") in ("inet", "inet6") and "local" in info:
                    entries.add(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}"))
        return found

    def link_up(self, node: str) -> bool:
        """Whether the node's eth0 is administratively up (``kill`` sets it down)."""
        out = run(["ip", "-n", self.ns(node), "-j", "link", "show", "dev", NETWORKS[0][1]], check=False).stdout
        try:
            return "UP" in json.loads(out or "[]")[0].get("flags", [])
        except (ValueError, IndexError):
            return False

    def held(self, node: str) -> set[IPAddress]:
        """Host-prefix addresses (/32, /128: VIPs) on the node's lab interfaces that are up.

        A killed node's links are down: the IPv4 VIP it may still carry is unreachable, not held.
        """
        held: set[IPAddress] = set()
        for name, addrs in self.addresses(node, up_only=True).items():
            if name in {interface for _, interface, *_ in NETWORKS}:
                held.update(a.ip for a in addrs if a.network.prefixlen == a.max_prefixlen)
        return held

    def holders(self) -> dict[IPAddress, list[str]]:
        """Every VIP held in the lab and the node(s) holding it (two means split brain)."""
        result: dict[IPAddress, list[str]] = {}
        existing = set(namespaces())
        for node in self.nodes:
            if self.ns(node) not in existing:
                continue
            for vip in self.held(node):
                result.setdefault(vip, []).append(node)
        return dict(sorted(result.items(), key=lambda kv: (kv[0].version, int(kv[0]))))

    def holders_of(self, vip: IPAddress) -> list[str]:
        return [node for node in self.nodes if vip in self.held(node)]

    # -- persistence ----------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.run_dir / "lab.json"

    def save(self) -> None:
        if not self.run_dir.exists():
            return
        data = {"prefix": self.prefix, "nodes": list(self.nodes), "meta": self.meta,
                "processes": [r.to_json() for r in self.processes]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, prefix: str = DEFAULT_PREFIX, run_root: Path = RUN_ROOT) -> "Lab":
        """The lab a previous invocation brought up; LabError if there is none."""
        path = run_root / prefix / "lab.json"
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise LabError(f"no lab {prefix!r} is up (no {path}); run 'vipcore lab up' first") from None
        except ValueError:
            raise LabError(f"{path} is damaged; run 'vipcore lab down' to clean up") from None
        return cls(prefix=prefix, nodes=tuple(data["nodes"]), run_root=run_root, meta=dict(data.get("meta", {})),
                   processes=[ProcessRecord.from_json(r) for r in data.get("processes", [])])
