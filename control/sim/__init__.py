"""The simulation library: hosts that are network namespaces, and tools that act inside them.

Tests, the benchmarks and ``dockline demo`` build their worlds from these modules (installed with
the CLI, because the demo needs them):

  simhost   SimHost: a host netns running its own agent, plus an "outside" netns on an uplink
  nstools   sockets opened in a netns, commands run in one, veth links between two, echo servers
  loadgen   the Cython load generators (TCP RR, TCP CRR, UDP rate): Python API and command line
            (``python -m dockline.control.sim.loadgen``); the loops are in ``_loadgen.pyx``
  demo      ``dockline demo``: one throwaway simulated host showing every feature working

Nothing here touches the root network namespace: everything is made inside namespaces the
caller owns and is removed by their cleanup.
"""
