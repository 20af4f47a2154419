"""The control plane's own nat chains (published ports, masquerade). Placeholder re-export until
the chain building moves here from control/datapath/ebpf.py."""

from ..datapath.ebpf import MANAGED_CHAINS, merged_ruleset, published_as_rules  # noqa: F401
