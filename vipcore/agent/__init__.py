"""The node runtime: desired state in, this node's VIP groups out to the active backend."""
