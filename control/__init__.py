"""dockline control plane: desired state, IPAM, netlink, datapath backends, agent and CLI."""

__version__ = "0.1.0"
