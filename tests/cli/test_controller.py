"""``vipcore controller`` as a process: config, kubeconfig, metrics endpoint, SIGTERM releases the Lease."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from tests.helpers.cluster import lb_ips, node, service, vippool, wait_for

from vipcore.testing.apiserver import ApiServer

VIPCORE = Path(sys.executable).parent / "vipcore"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_controller_process_allocates_serves_metrics_and_releases_on_sigterm(server: ApiServer, tmp_path: Path) -> None:
    server.create(node("node-a"))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "source": "kubernetes", "log_format": "json",
        "kubernetes": {"kubeconfig": str(kubeconfig), "namespace": "default"},
        "controller": {"identity": "cli-1", "leader_election": {"duration": 3, "renew_deadline": 2,
                                                                "retry_period": 0.5}},
    }))
    port = free_port()
    proc = subprocess.Popen([str(VIPCORE), "controller", "--config", str(config), "--metrics", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: fetch(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=20, what="/readyz")
        server.create(service("web"))
        wait_for(lambda: lb_ips(server, "web"), what="allocation")
        # Counted once the pass that wrote the status is over.
        text = wait_for(lambda: (t := fetch(f"http://127.0.0.1:{port}/metrics")[1])
                        and "vipcore_controller_allocations_total 1.0" in t and t, what="the allocation counted")
        assert "vipcore_controller_leader 1.0" in text
        assert 'vipcore_pool_addresses_allocated{family="IPv4",pool="lan"} 1.0' in text
        status = json.loads(fetch(f"http://127.0.0.1:{port}/status")[1])
        assert status["identity"] == "cli-1" and status["leader"] is True and len(status["groups"]) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lease = server.get("coordination.k8s.io/v1", "Lease", "vipcore-controller", "default")
    assert lease["spec"]["holderIdentity"] == ""  # released: a standby takes over at once


def test_missing_kubeconfig_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"source": "kubernetes",
                                      "kubernetes": {"kubeconfig": str(tmp_path / "nope.yaml")}}))
    result = subprocess.run([str(VIPCORE), "controller", "--config", str(config), "--metrics", ""],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.startswith("vipcore: error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_controller_config_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"source": "kubernetes", "controller": {"leader_election": {"duration": 1,
                                                                                              "renew_deadline": 5}}}))
    result = subprocess.run([str(VIPCORE), "controller", "--config", str(config), "--metrics", ""],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "controller.leader_election" in result.stderr and "Traceback" not in result.stderr
