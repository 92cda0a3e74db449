"""The Kubernetes client: configuration, the API's names and formats, errors, the retry policy, one request.

Everything in :mod:`vipcore.kube` that reaches the API server goes through
:func:`request` (writes, Lease reads) or the typed list/watch calls of
:mod:`vipcore.kube.informer`. A request always has a timeout, never retries
on its own (urllib3's hidden retries are off), and fails with a
:class:`KubernetesError` whose message :func:`describe` wrote.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import attrs
import tenacity
import urllib3

from vipcore.core.errors import VipcoreError

log = logging.getLogger("vipcore.kube")

#: vipcore's API group and version, and the plurals of its kinds.
GROUP = "vipcore.io"
VERSION = "v1alpha1"
VIPGROUPS = "vipgroups"
VIPPOOLS = "vippools"
#: The patch type of every vipcore write (RFC 7386; valid on built-in kinds and custom resources alike).
MERGE_PATCH = "application/merge-patch+json"
#: Seconds a request may take unless the caller gives less.
REQUEST_TIMEOUT = 10.0


class KubernetesError(VipcoreError):
    """The Kubernetes API refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ApiUnavailableError(KubernetesError):
    """The source could not get a first complete state in time."""


class NotLeaderError(KubernetesError):
    """A fenced write was refused before it was sent: this replica does not (or no longer) lead."""


# ------------------------------------------------------------------ errors


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (the client's ``ApiException`` or ours), else None."""
    if isinstance(exc, KubernetesError):
        return exc.status
    import kubernetes.client

    return exc.status if isinstance(exc, kubernetes.client.ApiException) else None


def transient(exc: BaseException) -> bool:
    """Errors that can heal: 5xx, 429, timeouts and connection failures."""
    if isinstance(exc, NotLeaderError):
        return False
    status = status_of(exc)
    if status is not None:
        return status >= 500 or status == 429
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError, TimeoutError))


def describe(exc: BaseException) -> str:
    """One line about an API or connection error: ``HTTP 409: <the Status message>``, or the exception."""
    if isinstance(exc, KubernetesError):
        return str(exc)
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}: {_status_message(getattr(exc, 'body', None)) or getattr(exc, 'reason', '')}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _status_message(body: Any) -> str:
    """The ``message`` of a ``Status`` body (bytes or text), else the start of the body."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not body:
        return ""
    try:
        message = json.loads(body).get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message or body).splitlines()[0][:300]


# ------------------------------------------------------------------ retries


def backoff(initial: float, maximum: float) -> Any:
    """Exponential from ``initial`` doubling to ``maximum``, plus up to ``initial`` of random jitter."""
    return tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(0, initial)


@attrs.frozen
class RetryPolicy:
    """How a request that failed transiently (:func:`transient`) is tried again: bounded and jittered."""

    attempts: int = 5
    initial: float = 0.1
    maximum: float = 2.0

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=backoff(self.initial, self.maximum),
            stop=tenacity.stop_after_attempt(self.attempts),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )


#: The one policy of API requests (writes and Lease reads): 5 tries within about 2 s.
API_RETRY = RetryPolicy()


# ------------------------------------------------------------------ the client


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


def request(client: Any, method: str, path: str, body: Any = None, *, timeout: float = REQUEST_TIMEOUT,
            content_type: str = "application/json",
            query: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """One HTTP request through ``client`` (its host, TLS and credentials); the response body as a dict.

    The body is sent exactly as given (JSON): the typed APIs of the client
    (v37) re-serialise dict bodies through their models, which turns a
    ``MicroTime`` such as ``...00.000000Z`` into ``...00+00:00`` that a real
    server rejects. Raises :class:`KubernetesError` (with ``status``) for
    anything but 2xx, urllib3's errors for connection failures and timeouts.
    """
    method_, url, headers, _, _ = client.param_serialize(
        method=method, resource_path=path, query_params=list(query),
        header_params={"Accept": "application/json", **({"Content-Type": content_type} if body is not None else {})},
        auth_settings=["BearerToken"])
    data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
    resp = client.rest_client.pool_manager.request(
        method_, url, body=data, headers=headers, timeout=urllib3.Timeout(total=timeout), retries=False,
        preload_content=True)
    if not 200 <= resp.status <= 299:
        raise KubernetesError(f"HTTP {resp.status}: {_status_message(resp.data) or resp.reason}",
                              status=resp.status)
    result: dict[str, Any] = json.loads(resp.data) if resp.data else {}
    return result


#: The typed APIs' list arguments (what :class:`~vipcore.kube.kinds.Kind` listers are called with) as
#: query parameters.
_LIST_PARAMETERS = {"watch": "watch", "resource_version": "resourceVersion", "allow_watch_bookmarks":
                    "allowWatchBookmarks", "timeout_seconds": "timeoutSeconds", "label_selector": "labelSelector",
                    "field_selector": "fieldSelector", "limit": "limit", "_continue": "continue"}


def list_path(client: Any, path: str, *, _preload_content: bool = False, _request_timeout: Any = None,
              **parameters: Any) -> Any:
    """GET a list (or, with ``watch=True``, a watch) of the collection at ``path``: the unread
    ``urllib3`` response, exactly what a typed API (``CoreV1Api.list_node``) returns with
    ``_preload_content=False``, and the same ``ApiException`` for anything but 2xx.

    The typed APIs are not used: ``CoreV1Api`` alone imports ~250 pydantic models, about 20 MB of an
    agent's memory, for responses that are never deserialised. ``parameters``: the typed APIs'
    keyword arguments (``resource_version``, ``label_selector``, ``limit``, ``_continue``, ...).
    """
    import kubernetes.client

    if _preload_content:
        raise ValueError("list_path returns the raw response: call it with _preload_content=False")
    unknown = set(parameters) - set(_LIST_PARAMETERS)
    if unknown:
        raise TypeError(f"list_path got unexpected arguments {sorted(unknown)}")
    query = [(_LIST_PARAMETERS[k], v) for k, v in parameters.items() if v is not None]
    method, url, headers, body, post = client.param_serialize(
        method="GET", resource_path=path, query_params=query, header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"])
    resp = client.call_api(method, url, headers, body, post, _request_timeout=_request_timeout)
    if not 200 <= resp.status <= 299:
        resp.read()
        raise kubernetes.client.ApiException.from_response(http_resp=resp, body=None, data=None)
    return resp.response


def list_objects(client: Any, kind: Any, *, timeout: float = REQUEST_TIMEOUT) -> list[dict[str, Any]]:
    """One list of ``kind`` (a :class:`~vipcore.kube.kinds.Kind`) as plain dicts; a KubernetesError on failure."""
    try:
        resp = kind.lister(client)(_request_timeout=timeout, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(resp.data).get("items") or []
    except Exception as exc:  # noqa: BLE001 - ApiException and urllib3's many connection errors
        raise KubernetesError(describe(exc), status=status_of(exc)) from None
    return items


# ------------------------------------------------------------------ the API's time formats


def rfc3339(at: float) -> str:
    """A Kubernetes ``Time`` (RFC 3339, whole seconds, UTC), e.g. ``2026-01-01T00:00:00Z``."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(at: float) -> str:
    """A Kubernetes ``MicroTime`` (RFC 3339 with exactly six fractional digits, UTC)."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def object_path(api_version: str, plural: str, name: str | None = None, *, namespace: str | None = None,
                subresource: str | None = None) -> str:
    """The REST path of a collection or an object: ``/api/v1/namespaces/ns/services/web/status``."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace is not None:
        parts.append(f"/namespaces/{namespace}")
    parts.append(f"/{plural}")
    if name is not None:
        parts.append(f"/{name}")
    if subresource is not None:
        parts.append(f"/{subresource}")
    return "".join(parts)

