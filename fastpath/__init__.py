"""Userspace fast path: picks the Cython VXLAN codec when it is built, else the pure-Python reference."""

import os

from . import vxlan_py

IMPLEMENTATIONS = {"python": vxlan_py}  # name -> importable codec module with public_api
if os.environ.get("DOCKLINE_NO_EXTENSIONS") != "1":
    try:
        from . import _vxlan_c
    except ModuleNotFoundError:  # not built; a built-but-broken extension still raises
        pass
    else:
        IMPLEMENTATIONS["cython"] = _vxlan_c

vxlan = _impl = IMPLEMENTATIONS.get("cython", vxlan_py)

public_api = ["VXLAN_PORT", "VXLAN_HLEN", "OUTER_HLEN", "VXLAN_FLAG_I", "REASONS", "VxlanError",
              "ipv4_checksum", "flow_source_port", "encap", "decap"]
