"""The namespace lab: a throw-away network of nodes and a client on this machine.

``topology`` builds and removes the namespaces and runs processes in them,
``agents`` says what the nodes run (vipcore agents or plain keepalived),
``probe`` measures what a pinging client sees, ``cli`` is ``vipcore lab``.
Used by ``vipcore lab``, the integration tests and ``bench/failover.py``.
"""

from __future__ import annotations

from vipcore.lab.agents import PLAIN_KEEPALIVED, Deployment, wait_for_holders
from vipcore.lab.probe import Probe, ProbeResult
from vipcore.lab.topology import Lab, ProcessRecord

__all__ = ["PLAIN_KEEPALIVED", "Deployment", "Lab", "Probe", "ProbeResult", "ProcessRecord", "wait_for_holders"]
