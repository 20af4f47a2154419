"""NAT rules: the user's nat table (``dockline iptables -t nat``, ``nat import``/``save``) and the
conntrack views. The rules are kept in the store as iptables-save text; the datapath compiles
them together with the control plane's own chains (control/nat/managed.py).

Contract: a rule set is validated and compiled by the datapath before it is stored, and stored
only if the datapath took it, so a refused rule set changes nothing.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgument
from ..nat.commands import apply as apply_command, is_listing
from ..nat.managed import MANAGED_CHAINS, merged_ruleset, published_as_rules, remember_user_rules, user_rules
from ..nat.parser import parse_save
from ..nat.restore import restore
from ..nat.rules import Ruleset
from .context import NAT_RULES_KEY

log = logging.getLogger("dockline.nat")


class NatService:
    def __init__(self, ctx):
        self.ctx = ctx

    def _datapath(self):
        dp = self.ctx.datapath
        if not dp.nat_rules_supported:
            dp.check_nat(self.ctx.snapshot())    # raises NotSupported, naming what is missing
        return dp

    def _set(self, ruleset: Ruleset) -> dict:
        dp = self._datapath()
        for c in MANAGED_CHAINS:
            if c in ruleset.chains:
                raise InvalidArgument(f"chain {c} is managed by dockline (published ports, masquerade)")
        text = ruleset.save()
        remember_user_rules(text, ruleset)           # the datapath's merge does not parse it again
        state = self.ctx.snapshot()
        old = state.nat_rules
        state.nat_rules = text
        dp.check_nat(state)                          # raises with nothing applied
        with self.ctx.store.transaction() as tx:
            tx.set_meta(NAT_RULES_KEY, text)
        try:
            applied = dp.apply_nat(state)
        except BaseException:
            with self.ctx.store.transaction() as tx:
                tx.set_meta(NAT_RULES_KEY, old)
            raise
        log.info("nat rules changed: %s", applied)
        return applied

    def iptables(self, argv: list[str]) -> dict:
        """One ``iptables -t nat ...`` command on the user's nat table. Listing commands (-L, -S)
        show the control plane's chains too, as iptables would show Docker's."""
        with self.ctx.lock:
            self._datapath()
            state = self.ctx.snapshot()
            if is_listing(argv):
                rs, published = merged_ruleset(state, state.nat_rules)
                rs.chains["DOCKLINE"] = published_as_rules(published)
                _, out = apply_command(rs, argv)
                return {"output": out}
            for a in argv:
                if a in MANAGED_CHAINS:
                    raise InvalidArgument(f"chain {a} is managed by dockline (published ports, masquerade): "
                                          "use your own chains")
            user = user_rules(state.nat_rules)
            new, out = apply_command(user, argv)        # on a copy
            if list(new.chains.items()) != list(user.chains.items()):
                self._set(new)
            return {"output": out}

    def import_(self, text: str) -> dict:
        """Replace the user's nat table with ``iptables-save`` output (its *nat block)."""
        with self.ctx.lock:
            self._datapath()
            ruleset, warnings = parse_save(text)
            applied = self._set(ruleset)
            return {"chains": len(ruleset.chains), "rules": sum(len(r) for r in ruleset.chains.values()),
                    "warnings": warnings, "applied": applied}

    def restore(self, text: str, noflush: bool = False, test: bool = False) -> dict:
        """``iptables-restore -T nat [--noflush] [--test]`` on the user's nat table
        (control/nat/restore.py). The result is applied in one step, or with ``test`` only
        checked (parsed, validated and compiled), like iptables-restore --test."""
        with self.ctx.lock:
            self._datapath()
            state = self.ctx.snapshot()
            new, warnings = restore(user_rules(state.nat_rules), text, noflush)
            if new is None:
                return {"changed": False, "warnings": warnings + ["no *nat table in the input: nothing changed"]}
            for c in MANAGED_CHAINS:
                if c in new.chains:
                    raise InvalidArgument(f"chain {c} is managed by dockline (published ports, masquerade)")
            out = {"changed": not test, "chains": len(new.chains),
                   "rules": sum(len(r) for r in new.chains.values()), "warnings": warnings}
            if test:
                text = new.save()
                remember_user_rules(text, new)
                state.nat_rules = text
                self.ctx.datapath.check_nat(state)
                return out
            out["applied"] = self._set(new)
            return out

    def save(self) -> dict:
        """The user's nat table as iptables-save text (restorable by ``nat import`` and by
        ``iptables-restore``)."""
        with self.ctx.lock:
            with self.ctx.store.transaction() as tx:
                return {"text": user_rules(tx.get_meta(NAT_RULES_KEY, "") or "").save()}

    def conntrack(self, limit: int = 1000) -> dict:
        dp = self.ctx.datapath
        return {"flows": dp.conntrack(limit), "table": dp.ct_pressure()}

    def interfaces_changed(self) -> None:
        """The host's interfaces changed (the agent's link watch): let the NAT follow them."""
        with self.ctx.lock:
            dp = self.ctx.datapath
            if dp.refresh_interfaces():
                # an interface the rules name (-i/-o, PREFIX+) appeared, went or was renamed
                applied = dp.apply_nat(self.ctx.snapshot())
                log.info("nat rules compiled again for a change of the interfaces they name: %s", applied)

    def gc(self) -> dict:
        with self.ctx.lock:
            return self.ctx.datapath.gc_conntrack()
