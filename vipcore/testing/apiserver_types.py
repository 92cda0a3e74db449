"""The kinds the test API server serves: built-ins, and kinds from CustomResourceDefinitions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vipcore.testing.apiserver_match import Obj, invalid
from vipcore.testing.apiserver_store import PrinterColumn, ResourceType


def _default_service(obj: Obj) -> None:
    """Defaults the real API server applies to a Service (on a dual-stack capable cluster)."""
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise invalid("Service spec must be an object")
    obj.setdefault("status", {"loadBalancer": {}})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("LoadBalancer", "NodePort"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    elif spec.get("loadBalancerClass"):
        raise invalid(f'Service "{obj["metadata"]["name"]}" is invalid: spec.loadBalancerClass: Forbidden: may '
                      "only be used when `type` is 'LoadBalancer'")
    families = spec.get("ipFamilies")
    policy = spec.get("ipFamilyPolicy")
    if not families:
        spec["ipFamilies"] = ["IPv4", "IPv6"] if policy in ("PreferDualStack", "RequireDualStack") else ["IPv4"]
    if not policy:
        spec["ipFamilyPolicy"] = "SingleStack" if len(spec["ipFamilies"]) == 1 else "RequireDualStack"
    name = obj["metadata"]["name"]
    if not spec.get("ports") and spec["type"] != "ExternalName" and spec.get("clusterIP") != "None":
        raise invalid(f'Service "{name}" is invalid: spec.ports: Required value')
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    _check_service_status(obj)


def _check_service_status(obj: Obj) -> None:
    """``status.loadBalancer.ingress``: LoadBalancer Services only (1.29+); ``ipMode`` defaults to VIP (1.30+)."""
    status = obj.get("status") or {}
    lb = status.get("loadBalancer") if isinstance(status, dict) else None
    ingress = (lb or {}).get("ingress") if isinstance(lb, dict) else None
    if not ingress:
        return
    name = obj["metadata"]["name"]
    if (obj.get("spec") or {}).get("type") != "LoadBalancer":
        raise invalid(f'Service "{name}" is invalid: status.loadBalancer.ingress: Forbidden: may only be used '
                      "when `spec.type` is 'LoadBalancer'")
    for i, entry in enumerate(ingress):
        if not isinstance(entry, dict):
            raise invalid(f'Service "{name}" is invalid: status.loadBalancer.ingress[{i}]: must be an object')
        if entry.get("ip"):
            entry.setdefault("ipMode", "VIP")
            if entry["ipMode"] not in ("VIP", "Proxy"):
                raise invalid(f'Service "{name}" is invalid: status.loadBalancer.ingress[{i}].ipMode: Unsupported '
                              f'value: "{entry["ipMode"]}": supported values: "Proxy", "VIP"')
        elif entry.get("ipMode"):
            raise invalid(f'Service "{name}" is invalid: status.loadBalancer.ingress[{i}].ipMode: Forbidden: must '
                          "not be set when `ip` is empty")


def _prepare_service_update(old: Obj, new: Obj) -> None:
    """Upstream's dropTypeDependentFields: leaving LoadBalancer drops what only it uses, and its status."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if old_spec.get("type") == "LoadBalancer" and new_spec.get("type") != "LoadBalancer":
        for field in ("loadBalancerClass", "allocateLoadBalancerNodePorts"):
            if new_spec.get(field) == old_spec.get(field):
                new_spec.pop(field, None)
        if new_spec.get("type") not in ("NodePort",):
            for field in ("externalTrafficPolicy", "healthCheckNodePort"):
                if new_spec.get(field) == old_spec.get(field):
                    new_spec.pop(field, None)
        status = new.get("status")
        if isinstance(status, dict):
            status["loadBalancer"] = {}


def _check_service_update(old: Obj, new: Obj) -> None:
    """``spec.loadBalancerClass`` cannot change while the Service stays a LoadBalancer, as upstream."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if old_spec.get("type") == new_spec.get("type") == "LoadBalancer":
        if old_spec.get("loadBalancerClass") != new_spec.get("loadBalancerClass"):
            raise invalid(f'Service "{new["metadata"]["name"]}" is invalid: spec.loadBalancerClass: Invalid value: '
                          f'{new_spec.get("loadBalancerClass")!r}: may not change once set')


_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _validate_event(obj: Obj) -> None:
    """core/v1 Event validation, as upstream's ValidateEventCreate for the v1 API."""
    name = obj["metadata"]["name"]
    problems = []
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict) or not involved.get("kind") or not involved.get("name"):
        problems.append("involvedObject: Required value: kind and name")
    else:
        namespace = obj["metadata"].get("namespace")
        inv_ns = involved.get("namespace")
        if inv_ns and inv_ns != namespace:
            problems.append(f"involvedObject.namespace: Invalid value: {inv_ns!r}: does not match event.namespace")
        if not inv_ns and namespace not in ("default", "", None):
            problems.append(f"involvedObject.namespace: Invalid value: \"\": does not match event.namespace")
    if obj.get("type") not in ("Normal", "Warning"):
        problems.append(f'type: Unsupported value: {obj.get("type")!r}: supported values: "Normal", "Warning"')
    if len(str(obj.get("reason") or "")) > 128:
        problems.append("reason: Too long: may not be more than 128 bytes")
    for field in ("reportingComponent", "reportingInstance"):
        if len(str(obj.get(field) or "")) > 128:
            problems.append(f"{field}: Too long: may not be more than 128 bytes")
    for field in ("firstTimestamp", "lastTimestamp"):
        value = obj.get(field)
        if value is not None and not (isinstance(value, str) and _TIME.match(value)):
            problems.append(f"{field}: Invalid value: {value!r}: must be an RFC 3339 time")
    if obj.get("eventTime") is not None and not _MICRO_TIME.match(str(obj["eventTime"])):
        problems.append(f"eventTime: Invalid value: {obj['eventTime']!r}: must be a MicroTime "
                        "(RFC 3339 with six fractional digits)")
    if problems:
        raise invalid(f'Event "{name}" is invalid: ' + ", ".join(problems))


_SERVICE_FIELDS: dict[str, Any] = {
    "apiVersion": None, "kind": None, "metadata": None,
    "spec": {
        "ports": [{"name": None, "protocol": None, "appProtocol": None, "port": None, "targetPort": None,
                   "nodePort": None}],
        "selector": None, "clusterIP": None, "clusterIPs": None, "type": None, "externalIPs": None,
        "sessionAffinity": None, "loadBalancerIP": None, "loadBalancerSourceRanges": None, "externalName": None,
        "externalTrafficPolicy": None, "healthCheckNodePort": None, "publishNotReadyAddresses": None,
        "sessionAffinityConfig": None, "ipFamilies": None, "ipFamilyPolicy": None,
        "allocateLoadBalancerNodePorts": None, "loadBalancerClass": None, "internalTrafficPolicy": None,
        "trafficDistribution": None,
    },
    "status": {"loadBalancer": {"ingress": [{"ip": None, "hostname": None, "ipMode": None, "ports": None}]},
               "conditions": None},
}
_EVENT_FIELDS: dict[str, Any] = {k: None for k in (
    "apiVersion", "kind", "metadata", "involvedObject", "reason", "message", "source", "firstTimestamp",
    "lastTimestamp", "count", "type", "eventTime", "series", "action", "related", "reportingComponent",
    "reportingInstance")}
_LEASE_FIELDS: dict[str, Any] = {"apiVersion": None, "kind": None, "metadata": None, "spec": {k: None for k in (
    "holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions", "strategy",
    "preferredHolder")}}
_ENDPOINT_SLICE_FIELDS: dict[str, Any] = {k: None for k in (
    "apiVersion", "kind", "metadata", "addressType", "endpoints", "ports")}
_OBJECT_FIELDS: dict[str, Any] = {k: None for k in ("apiVersion", "kind", "metadata", "spec", "status")}


def _default_namespace(obj: Obj) -> None:
    obj["status"] = {"phase": "Active"}
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})


def _default_endpoint_slice(obj: Obj) -> None:
    if obj.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
        raise invalid(f'EndpointSlice.discovery.k8s.io "{obj["metadata"]["name"]}" is invalid: addressType: '
                      'Required value')


#: A ``MicroTime`` as the API server parses it (Go layout ``2006-01-02T15:04:05.000000Z07:00``).
_MICRO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})")


def _validate_lease(obj: Obj) -> None:
    """``coordination.k8s.io/v1`` Lease rules of the real API server (on create and update)."""
    spec = obj.get("spec") or {}
    where = f'Lease.coordination.k8s.io "{obj["metadata"]["name"]}" is invalid'
    if not isinstance(spec, dict):
        raise invalid(f"{where}: spec: must be an object")
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0):
        raise invalid(f"{where}: spec.leaseDurationSeconds: Invalid value: {duration!r}: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or isinstance(transitions, bool)
                                    or transitions < 0):
        raise invalid(f"{where}: spec.leaseTransitions: Invalid value: {transitions!r}: must be greater than or "
                      "equal to 0")
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is not None and not (isinstance(value, str) and _MICRO_TIME.fullmatch(value)):
            raise invalid(f'{where}: spec.{field}: Invalid value: {value!r}: parsing time as '
                          '"2006-01-02T15:04:05.000000Z07:00": a MicroTime needs exactly six fractional digits')


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")

BUILTIN: tuple[ResourceType, ...] = (
    ResourceType(group="", version="v1", plural="namespaces", singular="namespace", kind="Namespace",
                 namespaced=False, status_subresource=True, short_names=("ns",),
                 fields=frozenset({"status.phase"}), defaulter=_default_namespace, known_fields=_OBJECT_FIELDS,
                 printer_columns=(PrinterColumn("Status", "string", ".status.phase"), _AGE)),
    ResourceType(group="", version="v1", plural="nodes", singular="node", kind="Node", namespaced=False,
                 status_subresource=True, keep_status_on_create=True, short_names=("no",), known_fields=_OBJECT_FIELDS,
                 fields=frozenset({"spec.unschedulable"}), printer_columns=(_AGE,)),
    ResourceType(group="", version="v1", plural="services", singular="service", kind="Service", namespaced=True,
                 status_subresource=True, short_names=("svc",), categories=("all",),
                 fields=frozenset({"spec.type", "spec.clusterIP"}), defaulter=_default_service,
                 update_check=_check_service_update, prepare_update=_prepare_service_update,
                 status_check=_check_service_status, known_fields=_SERVICE_FIELDS,
                 printer_columns=(
                     PrinterColumn("Type", "string", ".spec.type"),
                     PrinterColumn("Class", "string", ".spec.loadBalancerClass"),
                     PrinterColumn("External-IP", "string", ".status.loadBalancer.ingress[*].ip"),
                     _AGE)),
    ResourceType(group="", version="v1", plural="events", singular="event", kind="Event", namespaced=True,
                 short_names=("ev",), defaulter=_validate_event, known_fields=_EVENT_FIELDS,
                 fields=frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                                   "involvedObject.uid", "involvedObject.apiVersion", "reason", "type",
                                   "source", "reportingComponent"}),
                 printer_columns=(PrinterColumn("Type", "string", ".type"),
                                  PrinterColumn("Reason", "string", ".reason"),
                                  PrinterColumn("Message", "string", ".message"))),
    ResourceType(group="discovery.k8s.io", version="v1", plural="endpointslices", singular="endpointslice",
                 kind="EndpointSlice", namespaced=True, defaulter=_default_endpoint_slice,
                 known_fields=_ENDPOINT_SLICE_FIELDS,
                 printer_columns=(PrinterColumn("AddressType", "string", ".addressType"), _AGE)),
    ResourceType(group="coordination.k8s.io", version="v1", plural="leases", singular="lease", kind="Lease",
                 namespaced=True, defaulter=_validate_lease, known_fields=_LEASE_FIELDS,
                 printer_columns=(PrinterColumn("Holder", "string", ".spec.holderIdentity"), _AGE)),
    ResourceType(
        group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions",
        singular="customresourcedefinition", kind="CustomResourceDefinition", namespaced=False,
        status_subresource=True, generation=True, short_names=("crd", "crds"),
        defaulter=lambda obj: _check_crd(obj),
        printer_columns=(PrinterColumn("Created At", "date", ".metadata.creationTimestamp"),),
    ),
)


def _crd_status(obj: Obj) -> None:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    obj["status"] = {
        "acceptedNames": names,
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted"},
        ],
    }


def types_from_crd(obj: Mapping[str, Any]) -> list[ResourceType]:
    """The kinds a CustomResourceDefinition serves; raises a 422 ApiError when it is malformed."""
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    name = (obj.get("metadata") or {}).get("name", "")
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        raise invalid(f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: spec.group, '
                      "spec.names.plural and spec.names.kind are required")
    if name != f"{plural}.{group}":
        raise invalid(f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: metadata.name: '
                      f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        raise invalid(f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: spec.scope: '
                      f"Unsupported value: {scope!r}: supported values: \"Cluster\", \"Namespaced\"")
    result = []
    versions = spec.get("versions") or []
    if not versions:
        raise invalid(f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: spec.versions: '
                      "Invalid value: must have exactly one version marked as storage version")
    for version in versions:
        if not version.get("served", True):
            continue
        columns = tuple(
            PrinterColumn(name=c["name"], type=c.get("type", "string"), json_path=c["jsonPath"],
                          description=c.get("description", ""), priority=int(c.get("priority", 0)),
                          format=c.get("format", ""))
            for c in version.get("additionalPrinterColumns") or ()
        )
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        fields = frozenset(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or ())
        result.append(ResourceType(
            group=group, version=version["name"], plural=plural, singular=names.get("singular", kind.lower()),
            kind=kind, namespaced=scope == "Namespaced",
            status_subresource="status" in ((version.get("subresources") or {})),
            generation=True, short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            printer_columns=columns + (_AGE,), schema=schema, custom=True, fields=fields,
        ))
    return result


def _check_crd(obj: Obj) -> None:
    types_from_crd(obj)
    _crd_status(obj)


CRD = BUILTIN[-1]
