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
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])


def _check_service_update(old: Obj, new: Obj) -> None:
    """``spec.loadBalancerClass`` cannot change while the Service stays a LoadBalancer, as upstream."""
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if old_spec.get("type") == new_spec.get("type") == "LoadBalancer":
        if old_spec.get("loadBalancerClass") != new_spec.get("loadBalancerClass"):
            raise invalid(f'Service "{new["metadata"]["name"]}" is invalid: spec.loadBalancerClass: Invalid value: '
                          f'{new_spec.get("loadBalancerClass")!r}: may not change once set')


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
                 fields=frozenset({"status.phase"}), defaulter=_default_namespace,
                 printer_columns=(PrinterColumn("Status", "string", ".status.phase"), _AGE)),
    ResourceType(group="", version="v1", plural="nodes", singular="node", kind="Node", namespaced=False,
                 status_subresource=True, keep_status_on_create=True, short_names=("no",),
                 fields=frozenset({"spec.unschedulable"}), printer_columns=(_AGE,)),
    ResourceType(group="", version="v1", plural="services", singular="service", kind="Service", namespaced=True,
                 status_subresource=True, short_names=("svc",), categories=("all",),
                 fields=frozenset({"spec.type", "spec.clusterIP"}), defaulter=_default_service,
                 update_check=_check_service_update,
                 printer_columns=(
                     PrinterColumn("Type", "string", ".spec.type"),
                     PrinterColumn("Class", "string", ".spec.loadBalancerClass"),
                     PrinterColumn("External-IP", "string", ".status.loadBalancer.ingress[*].ip"),
                     _AGE)),
    ResourceType(group="", version="v1", plural="events", singular="event", kind="Event", namespaced=True,
                 short_names=("ev",),
                 fields=frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                                   "involvedObject.uid", "involvedObject.apiVersion", "reason", "type",
                                   "source", "reportingComponent"}),
                 printer_columns=(PrinterColumn("Type", "string", ".type"),
                                  PrinterColumn("Reason", "string", ".reason"),
                                  PrinterColumn("Message", "string", ".message"))),
    ResourceType(group="discovery.k8s.io", version="v1", plural="endpointslices", singular="endpointslice",
                 kind="EndpointSlice", namespaced=True, defaulter=_default_endpoint_slice,
                 printer_columns=(PrinterColumn("AddressType", "string", ".addressType"), _AGE)),
    ResourceType(group="coordination.k8s.io", version="v1", plural="leases", singular="lease", kind="Lease",
                 namespaced=True, defaulter=_validate_lease,
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
