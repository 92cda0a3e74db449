"""Scrape a real agent's endpoint during a lab failover (native_vrrp, network namespaces).

Two nodes run ``vipcore agent`` with the native_vrrp backend in the lab's
namespaces (prefix ``vcops``; nothing touches the host's interfaces). The
client sends a foreign VRRP advert (a VRID nobody here uses: another VRRP
speaker on the LAN), then the holder is killed. The backup's ``/metrics``
must show the transition, one failover observation and the drop counter
moving; ``ip netns exec NS vipcore status`` must show it as master with the
failover's duration, in text and JSON.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.wait import wait_for
from vipcore.lab.topology import Lab
from vipcore.ops.metrics import samples_of, short_name

pytestmark = pytest.mark.lab

VIPCORE = str(Path(sys.executable).parent / "vipcore")
PREFIX = "vcops"
NODES = ("node-a", "node-b")
VIP = ipaddress.ip_address("198.51.100.100")
FOREIGN_VRID_OFFSET = 100

SCRAPE = ("import sys, urllib.request; "
          "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9641/metrics', timeout=5).read().decode())")
# A VRRPv3 advert from the client: what another VRRP speaker on the LAN sends.
FOREIGN_ADVERT = """
import ipaddress, socket, sys
from vipcore_native_vrrp.protocol.packet import Advertisement, encode
src, dst = ipaddress.ip_address("198.51.100.2"), ipaddress.ip_address("224.0.0.18")
data = encode(Advertisement(vrid=int(sys.argv[1]), priority=100, interval_cs=100,
                            addresses=(ipaddress.ip_address("198.51.100.250"),)), src, dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(str(src)))
for _ in range(3):
    s.sendto(data, (str(dst), 0))
"""


def manifests(lab: Lab) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": str(lab.address(node))}]},
    } for node in lab.nodes]
    docs.append({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                 "spec": {"default": True, "interface": "eth0", "addresses": ["198.51.100.100-198.51.100.109"]}})
    docs.append({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "web", "namespace": "default", "annotations": {"vipcore.io/ip": str(VIP)}},
                 "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                          "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    return docs




@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(prefix=PREFIX, nodes=NODES, run_root=tmp_path / "run") as lab:
        folder = tmp_path / "manifests"
        folder.mkdir()
        (folder / "all.yaml").write_text(yaml.safe_dump_all(manifests(lab)))
        for node in NODES:
            config = tmp_path / f"{node}.yaml"
            config.write_text(yaml.safe_dump({
                "backend": "native_vrrp", "node_name": node, "source": "manifests", "manifests": [str(folder)],
                "state_dir": str(tmp_path / "state" / node), "log_format": "json",
                "metrics": {"address": "127.0.0.1:9641"}, "native_vrrp": {"advert_interval": 0.05},
            }))
            lab.spawn(node, "agent", [VIPCORE, "agent", "--config", str(config)], log=tmp_path / f"{node}.log")
        yield lab


def status(lab: Lab, node: str, *args: str) -> str:
    return lab.exec(node, [VIPCORE, "status", *args]).stdout


def scrape(lab: Lab, node: str) -> str:
    return lab.exec(node, [sys.executable, "-c", SCRAPE]).stdout


def ready(lab: Lab, node: str) -> bool:
    result = lab.exec(node, [VIPCORE, "status", "-o", "json"], check=False)
    return result.returncode == 0 and json.loads(result.stdout)["ready"]


def total(text: str, name: str, **match: str) -> float:
    return sum(v for labels, v in samples_of(text, name).items() if match.items() <= dict(labels).items())


def test_scrape_during_a_lab_failover(lab: Lab, tmp_path: Path) -> None:
    for node in NODES:
        wait_for(lambda: ready(lab, node), 20, f"{node} ready")
    holder = wait_for(lambda: (h := lab.holders_of(VIP)) and len(h) == 1 and h[0], 10, "one holder")
    backup = next(n for n in NODES if n != holder)
    document = json.loads(status(lab, backup, "-o", "json"))
    (router,) = document["routers"]
    assert router["state"] == "backup" and router["vips"] == [str(VIP)]
    group, vrid = short_name(router["group"]), router["vrid"]

    before = scrape(lab, backup)
    assert total(before, "vipcore_router_state", group=group, state="backup") == 1.0
    masters_before = total(before, "vipcore_transitions_total", group=group, to="master")
    failovers_before = total(before, "vipcore_failover_seconds_count")
    unknown_before = total(before, "vipcore_vrrp_packets_dropped_total", reason="unknown_vrid")
    received_before = total(before, "vipcore_vrrp_packets_received_total")

    foreign = (vrid + FOREIGN_VRID_OFFSET - 1) % 255 + 1
    lab.exec(None, [sys.executable, "-c", FOREIGN_ADVERT, str(foreign)])
    lab.kill(holder)
    # The killed node keeps its VIP on its (now down) interface: look at the backup only.
    wait_for(lambda: VIP in lab.held(backup), 10, f"{backup} to hold")
    after = wait_for(lambda: (t := scrape(lab, backup)) and
                     total(t, "vipcore_failover_seconds_count") > failovers_before and t, 5, "the failover metric")

    assert total(after, "vipcore_router_state", group=group, state="master") == 1.0
    assert total(after, "vipcore_router_state", group=group, state="backup") == 0.0
    assert total(after, "vipcore_transitions_total", group=group, to="master") == masters_before + 1
    # Master_Down_Interval, or node-level liveness (when enabled) noticing the node first.
    assert (total(after, "vipcore_transitions_total", group=group, to="master", reason="master_down")
            + total(after, "vipcore_transitions_total", group=group, to="master", reason="peer_lost")) >= 1
    assert total(after, "vipcore_failover_seconds_count") == failovers_before + 1
    # Counted from when the master was last heard: Master_Down_Interval at 0.05 s adverts is 0.15-0.2 s,
    # the liveness detection time 0.04 s; generous bounds on a shared 2-core machine.
    last = total(after, "vipcore_router_last_failover_seconds", group=group)
    assert 0.03 < last < 2.0, last
    assert total(after, "vipcore_failover_seconds_bucket", le="10.0") == failovers_before + 1
    assert total(after, "vipcore_vrrp_packets_dropped_total", reason="unknown_vrid") >= unknown_before + 3
    assert total(after, "vipcore_vrrp_packets_received_total") > received_before

    text = status(lab, backup)
    row = next(line for line in text.splitlines() if line.startswith(group))
    assert " master " in row and ("master down" in row or "liveness session" in row)
    assert f"{last * 1000:.0f}ms" in row
    document = json.loads(status(lab, backup, "-o", "json"))
    assert document["routers"][0]["state"] == "master"
    assert document["routers"][0]["last_failover_seconds"] == pytest.approx(last)

    # The JSON log line of the transition carries every field.
    lines = [json.loads(line) for line in (tmp_path / f"{backup}.log").read_text().splitlines()
             if line.startswith("{")]
    master = [r for r in lines if r.get("event") == "transition" and r.get("new") == "master"][-1]
    assert master["group"] == router["group"] and master["family"] == "IPv4" and master["vrid"] == vrid
    assert master["old"] == "backup" and master["reason"].startswith(("master down", "master 198.51.100."))
