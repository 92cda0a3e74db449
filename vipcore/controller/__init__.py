"""The cluster runtime: IPAM, Service status, VipGroups with persisted VRIDs, Events.

Independent of :mod:`vipcore.agent`: both build on :mod:`vipcore.kube` and the pure core.
"""
