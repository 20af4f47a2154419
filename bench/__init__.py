"""dockline benchmarks: topologies, load generators, reports and the regression gate."""
