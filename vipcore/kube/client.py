"""The Kubernetes client: configuration, errors and retry policies (used only inside this package)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import tenacity
import urllib3

from vipcore.core.errors import VipcoreError

log = logging.getLogger("vipcore.kube")

GROUP = "vipcore.io"
VERSION = "v1alpha1"


class KubernetesError(VipcoreError):
    """The Kubernetes API refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ApiUnavailableError(KubernetesError):
    """The source could not get a first complete state in time."""


class ConflictError(KubernetesError):
    """A compare-and-swap write lost against another writer (HTTP 409) too many times."""


def api_client(kubeconfig: str | None = None, *, context: str | None = None) -> Any:
    """An ``ApiClient``: from ``kubeconfig``, else in-cluster config, else ``~/.kube/config``."""
    import kubernetes.client
    import kubernetes.config

    try:
        if kubeconfig:
            return kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        return kubernetes.config.new_client_from_config(context=context)  # type: ignore[no-untyped-call]
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = kubeconfig or "the in-cluster service account or ~/.kube/config"
        raise KubernetesError(f"cannot configure the Kubernetes client from {where}: {exc}") from None


def status_of(exc: BaseException) -> int | None:
    import kubernetes.client

    return exc.status if isinstance(exc, kubernetes.client.ApiException) else None


def transient(exc: BaseException) -> bool:
    """Errors that can heal: 5xx, 429, timeouts and connection failures."""
    status = status_of(exc)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def describe(exc: BaseException) -> str:
    status = status_of(exc)
    if status is not None:
        try:
            message = json.loads(exc.body).get("message")  # type: ignore[attr-defined]
        except (TypeError, ValueError, AttributeError):
            message = getattr(exc, "reason", "")
        return f"HTTP {status}: {message}"
    return f"{type(exc).__name__}: {exc}"


def backoff(initial: float, maximum: float) -> Any:
    """Exponential from ``initial`` doubling to ``maximum``, plus up to ``initial`` of random jitter."""
    return tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(0, initial)


def write_retrying(attempts: int = 5, initial: float = 0.1, maximum: float = 2.0) -> tenacity.Retrying:
    """The retry policy of writes: transient errors only, bounded, jittered."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(transient),
        wait=backoff(initial, maximum),
        stop=tenacity.stop_after_attempt(attempts),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


def list_objects(client: Any, kind: Any, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """One list of ``kind`` (a :class:`~vipcore.kube.kinds.Kind`) as plain dicts; a KubernetesError on failure."""
    try:
        resp = kind.lister(client)(_request_timeout=timeout, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(resp.data).get("items") or []
    except Exception as exc:  # noqa: BLE001 - ApiException and urllib3's many connection errors
        raise KubernetesError(describe(exc).splitlines()[0][:300], status=status_of(exc)) from None
    return items
