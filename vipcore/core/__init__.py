"""The pure core: the model, its errors, conversion from Kubernetes objects, the resolver, IPAM, VRIDs,
placement, the controller's planner and the settings.

Nothing here does I/O: no sockets, no netlink, no Kubernetes client, no event loop.
"""
