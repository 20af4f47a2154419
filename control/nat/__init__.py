"""An iptables-compatible front end for the nat table, in pure Python (no kernel access).

- ``rules``: the data model (``PortRange``, ``Rule``, ``Ruleset``) and iptables-save rendering.
- ``parser``: rule specs (argv) and iptables-save text -> model, refusing unsupported options by name.
- ``commands``: one ``iptables -t nat ...`` command applied to a ``Ruleset`` (and ``-L``/``-S``).
- ``reference``: a reference evaluator with iptables' first-match semantics.
"""

from .commands import apply
from .parser import parse_rule_args, parse_save, tokenize
from .reference import Decision, Packet, evaluate
from .rules import BUILTIN_CHAINS, PortRange, Rule, Ruleset

__all__ = ["BUILTIN_CHAINS", "PortRange", "Rule", "Ruleset", "parse_rule_args", "parse_save",
           "tokenize", "apply", "Packet", "Decision", "evaluate"]
