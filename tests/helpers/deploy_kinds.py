"""Kinds the test API server does not serve by default but deploy/ creates, and the order kustomize applies."""

from __future__ import annotations

from vipcore.testing.apiserver_store import ResourceType

EXTRA_KINDS = (
    ResourceType(group="", version="v1", plural="serviceaccounts", singular="serviceaccount", kind="ServiceAccount",
                 namespaced=True),
    ResourceType(group="", version="v1", plural="configmaps", singular="configmap", kind="ConfigMap", namespaced=True),
    ResourceType(group="apps", version="v1", plural="deployments", singular="deployment", kind="Deployment",
                 namespaced=True, status_subresource=True),
    ResourceType(group="apps", version="v1", plural="daemonsets", singular="daemonset", kind="DaemonSet",
                 namespaced=True, status_subresource=True),
    *(ResourceType(group="rbac.authorization.k8s.io", version="v1", plural=p, singular=p[:-1], kind=k, namespaced=n)
      for p, k, n in (("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
                      ("roles", "Role", True), ("rolebindings", "RoleBinding", True))),
    ResourceType(group="policy", version="v1", plural="poddisruptionbudgets", singular="poddisruptionbudget",
                 kind="PodDisruptionBudget", namespaced=True, status_subresource=True),
    ResourceType(group="scheduling.k8s.io", version="v1", plural="priorityclasses", singular="priorityclass",
                 kind="PriorityClass", namespaced=False),
    *(ResourceType(group="admissionregistration.k8s.io", version="v1", plural=p, singular=p[:-1], kind=k,
                   namespaced=False)
      for p, k in (("validatingadmissionpolicies", "ValidatingAdmissionPolicy"),
                   ("validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding"))),
)
#: deploy/ files in the order kustomize applies them.
APPLY_ORDER = ["namespace.yaml", "crds/vipcore.io_vippools.yaml", "crds/vipcore.io_vipgroups.yaml", "rbac.yaml",
               "admission.yaml", "priority.yaml", "configmap.yaml", "controller.yaml", "agent.yaml"]
