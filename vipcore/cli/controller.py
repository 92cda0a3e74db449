"""``vipcore controller``: run one replica of the cluster controller."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

import attrs

from vipcore.controller.runtime import Controller, ControllerSettings
from vipcore.core.settings import load_config
from vipcore.kube import api_client
from vipcore.ops import logs
from vipcore.ops.http import Endpoint

log = logging.getLogger("vipcore.controller")


def cmd_controller(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"source": "kubernetes"}
    if args.log_format:
        overrides["log_format"] = args.log_format
    config = load_config(args.config, overrides=overrides)
    logs.configure(config.log_format, config.log_level)
    settings = ControllerSettings.from_config(config)
    if args.kubeconfig:
        settings = attrs.evolve(settings, kubeconfig=args.kubeconfig)
    if args.identity:
        settings = attrs.evolve(settings, identity=args.identity)
    client = api_client(settings.kubeconfig, context=settings.context)
    controller = Controller(settings, client, config=config)
    metrics_address = args.metrics if args.metrics is not None else config.metrics
    asyncio.run(_serve(controller, metrics_address))
    return 0


async def _serve(controller: Controller, metrics_address: str) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    endpoint = None
    if metrics_address:
        endpoint = Endpoint(metrics_address, controller.registry,
                            ready=lambda: controller.source.connection().synced, status=controller.status,
                            healthy=controller.healthy)
        await endpoint.start()
    runner = asyncio.create_task(controller.run())
    stopper = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done:
            runner.result()  # raise what stopped it
        log.info("stopping: releasing the lease", extra={"event": "stopping"})
    finally:
        runner.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if endpoint is not None:
            await endpoint.close()


def register(subparsers: Any) -> None:
    """Add ``vipcore controller`` to the CLI."""
    p = subparsers.add_parser(
        "controller", help="run the cluster controller (IPAM, Service status, VipGroups)",
        description="Allocate LoadBalancer addresses, write Service status and VipGroups with persisted "
                    "VRIDs; run two replicas, one leads through a coordination.k8s.io Lease.")
    p.add_argument("--config", required=True, help="config file (YAML)")
    p.add_argument("--kubeconfig", help="override kubernetes.kubeconfig")
    p.add_argument("--identity", help="override controller.identity (default $POD_NAME or hostname_pid)")
    p.add_argument("--metrics", help="host:port of /metrics, /healthz, /readyz, /status ('' disables; "
                                     "default: the config's metrics.address)")
    p.add_argument("--log-format", choices=("text", "json"), help="override log_format")
    p.set_defaults(func=cmd_controller)


