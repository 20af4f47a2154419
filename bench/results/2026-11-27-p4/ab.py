"""P4 before and after in one run: bench/publishing.py's procedure (DocklineTarget.publish_cost)
on fresh eBPF agents whose code comes from different trees, interleaved.

Each variant is NAME=PYTHONPATH, a folder holding a ``dockline`` directory whose ``control``,
``ebpf``, ``bench`` and ``fastpath`` entries link to one checkout (the agent runs
``python -m dockline.control`` and inherits PYTHONPATH). The procedure itself is the one of the
tree this script is run with. ``--order`` spells the sequence with A, B, ... for the variants.

    PYTHONPATH=/work/wt-p4-py .venv/bin/python bench/results/2026-11-27-p4/ab.py ab.json \\
        before=/work/wt-p4-basepy after=/work/wt-p4-py --order ABBAAB

(ab.json of this folder: "base" is main at 2ba9a01, "new" is branch p4 at cc8d94e, whose agent
code is the final one; the procedure then stopped at 61 pairs, 10 more per step.)
"""

import argparse
import json
import os
import pathlib
import tempfile

from dockline.bench.targets import DocklineTarget

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("variants", nargs="+", help="NAME=PYTHONPATH")
ap.add_argument("--order", default="ABBA")
ap.add_argument("--ports", type=int, default=10000)
a = ap.parse_args()
variants = [v.split("=", 1) for v in a.variants]
results = []
for letter in a.order:
    name, pythonpath = variants[ord(letter) - ord("A")]
    os.environ["PYTHONPATH"] = pythonpath        # SimHost copies the environment for the agent
    t = DocklineTarget("ebpf")
    t.build(tempfile.mkdtemp(prefix="p4ab-"))
    try:
        r = t.publish_cost(a.ports)
    finally:
        t.teardown()
    r["variant"] = name
    results.append(r)
    print(f"{name}: bulk {r['bulk_s']:.3f} s (net {r['bulk_net_s']:.3f}), one more "
          f"{r['marginal_port_s'] * 1000:.1f} ms {[round(x * 1000, 1) for x in r['marginal_port_ci95_s']]} "
          f"in {r['repeats']} pairs, agent RSS {r['agent_rss_delta_mib']:.1f} MiB, slab "
          f"{r['slab_delta_mib']:.1f} MiB, NAT step {r['control_plane_report']['one_more']['seconds'] * 1000:.2f} ms",
          flush=True)
    pathlib.Path(a.out).write_text(json.dumps(results, indent=1))
