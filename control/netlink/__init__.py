"""Kernel plumbing over netlink (pyroute2): network namespaces, links, addresses, routes."""
