"""Watch VIPs come and go on the lab's nodes, as the kernel reports it.

``ip -o monitor address`` in each node namespace: every host-prefix address
(/32, /128) added or deleted is one event. Backend-agnostic, so a flap that
lasts a millisecond is seen whether the agent or keepalived caused it —
which polling ``ip addr`` would miss.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import threading
import time

import attrs

from vipcore.lab.topology import IPAddress, Lab

_LINE = re.compile(r"^(?P<deleted>Deleted )?\d+:\s+(?P<dev>\S+)\s+inet6?\s+(?P<addr>[0-9a-fA-F:.]+)/(?P<plen>\d+)")


@attrs.frozen
class AddressEvent:
    """A VIP added to (or removed from) a node's interface."""

    time: float
    node: str
    interface: str
    address: IPAddress
    added: bool


def parse_event(line: str, node: str, now: float) -> AddressEvent | None:
    """One ``ip -o monitor address`` line as an event, if it is about a host-prefix address."""
    match = _LINE.match(line.strip())
    if not match:
        return None
    address = ipaddress.ip_address(match["addr"])
    if int(match["plen"]) != address.max_prefixlen or address.is_loopback:
        return None
    return AddressEvent(time=now, node=node, interface=match["dev"], address=address, added=not match["deleted"])


class AddressMonitor:
    """Collects :class:`AddressEvent` s from every node of a lab while running (a context manager)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.events: list[AddressEvent] = []
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> "AddressMonitor":
        for node in self.lab.nodes:
            proc = subprocess.Popen(["ip", "-n", self.lab.ns(node), "-o", "monitor", "address"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    start_new_session=True)
            self._procs.append(proc)
            thread = threading.Thread(target=self._read, args=(node, proc), daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(0.05)  # let `ip monitor` subscribe before anything happens
        return self

    def _read(self, node: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = parse_event(line, node, time.time())
            if event is not None:
                with self._lock:
                    self.events.append(event)

    def stop(self) -> list[AddressEvent]:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for thread in self._threads:
            thread.join(2)
        self._procs.clear()
        with self._lock:
            return list(self.events)

    def __enter__(self) -> "AddressMonitor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
