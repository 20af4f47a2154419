"""Packaging for dockline: maps the source tree onto the dockline.* namespace and builds the Cython fast path."""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("DOCKLINE_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [Extension("dockline.fastpath._vxlan_c", ["fastpath/_vxlan_c.pyx"]),
         Extension("dockline.control.sim._loadgen", ["control/sim/_loadgen.pyx"])],
        language_level=3,
    )

setup(
    name="dockline",
    version="0.1.0",  # control/__init__.py does not carry a version yet
    packages=[
        "dockline.control",
        "dockline.control.netlink",
        "dockline.control.datapath",
        "dockline.control.nat",
        "dockline.control.services",
        "dockline.control.store",
        "dockline.control.sim",
        "dockline.fastpath",
        "dockline.ebpf",
        "dockline.bench",
    ],
    package_dir={
        "dockline.control": "control",
        "dockline.control.netlink": "control/netlink",
        "dockline.control.datapath": "control/datapath",
        "dockline.control.nat": "control/nat",
        "dockline.control.services": "control/services",
        "dockline.control.store": "control/store",
        "dockline.control.sim": "control/sim",
        "dockline.fastpath": "fastpath",
        "dockline.ebpf": "ebpf",
        "dockline.bench": "bench",
    },
    package_data={"dockline.ebpf": ["*.c", "lib/*.h"], "dockline.bench": ["*.c"]},
    ext_modules=ext_modules,
    entry_points={"console_scripts": ["dockline=dockline.control.cli:main"]},
    python_requires=">=3.11",
)
