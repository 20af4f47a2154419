"""The domain store (networks, endpoints, attachments, IPAM leases, published ports, metadata) on
top of any revisioned ``KV`` backend.

``with store.transaction() as tx:`` reads through to the backend (remembering the revision of
every key and key range it read) and buffers every write; leaving the block commits them as ONE
compare-and-swap txn whose compares are those reads, so it commits as a whole or not at all. On
the local backends the block also holds ``kv.exclusive()``, so the compares always hold; on a
shared backend (etcd) a lost race raises ``TxnConflict`` and ``Store.run`` re-runs the function.

Key layout, relative to the store's scope (``hosts/<host>/``); all text, ids and names never
contain "/" (the parsers of ``model`` refuse it):

    seq                                   creation counter (orders the lists like the old rowids)
    networks/<id>                         "<seq> <Network JSON>"
    names/networks/<name>                 "<id>"          (unique names)
    endpoints/<id>                        "<seq> <Endpoint JSON>"
    names/endpoints/<name>                "<id>"
    attachments/<endpoint_id>/<net_id>    "<Attachment JSON>"
    leases/<net_id>/<ip>                  "<owner>"
    ports/<proto>/<host_port:05d>/<ip>    "<seq> <endpoint_id> <container_port>"   (the record; a
                                          key range is the (proto, host_port) index)
    endpoint-ports/<ep_id>/<seq:012d>     lines "<proto> <host_ip> <host_port> <container_port>\n",
                                          one per mapping of one put_port(s) call, at most
                                          INDEX_CHUNK lines a key; <seq> is the first mapping's
                                          (the by-endpoint index, written in the same txn; one
                                          key per batch, not per port, halves what publishing a
                                          range writes)
    counts/ports                          "<number of ports/ keys>" (kept in the same txn)
    meta/<key>                            "<value>"
"""

from __future__ import annotations

import bisect
import contextlib
import json

from ..errors import Conflict
from ..model import Attachment, Endpoint, Network, PortMapping
from .base import KV, Compacted, Compare, Delete, Put, Scoped, TxnConflict, host_scope, prefix_end

SCHEMA_VERSION = 2   # the key layout above; 1 was the table layout of the old SQLite store
INDEX_CHUNK = 4096   # mappings per by-endpoint index key (~100 KB; etcd's value limit is 1.5 MiB)


def _port_key(proto, host_port, host_ip):
    return f"ports/{proto}/{host_port:05d}/{host_ip}"


def _dump(rec) -> str:
    return json.dumps(rec.to_dict(), sort_keys=True)


def _seq_and_record(value: str, cls):
    seq, _, data = value.partition(" ")
    return int(seq), cls(**json.loads(data))


class Transaction:
    """The operations a store offers inside one atomic transaction (see the module docstring)."""

    def __init__(self, kv: KV):
        self._kv = kv
        self._writes: dict[str, str | None] = {}     # key -> new value, None = delete
        self._sorted_writes: list[str] | None = []   # sorted keys of _writes, rebuilt on demand
        self._reads: dict[str, int] = {}             # key -> mod_revision read (0: absent)
        self._ranges: list[tuple[str, str, int]] = []  # (start, end, revision) of range reads
        self._seq: int | None = None
        # key spans [start, end) whose every key this transaction deletes: sent as one range
        # delete (10,000 ports of an endpoint are one DELETE, not 10,000)
        self._span_deletes: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ buffered key access
    def _get(self, key: str) -> str | None:
        if key in self._writes:
            return self._writes[key]
        kv = self._kv.get(key)
        self._reads.setdefault(key, kv.mod_revision if kv else 0)
        return kv.value if kv else None

    def _put(self, key: str, value: str | None) -> None:
        if key not in self._writes:
            self._sorted_writes = None
        self._writes[key] = value

    def _delete(self, key: str) -> None:
        self._put(key, None)

    def _writes_in(self, start: str, end: str) -> list[str]:
        if self._sorted_writes is None:
            self._sorted_writes = sorted(self._writes)
        keys = self._sorted_writes
        return keys[bisect.bisect_left(keys, start):bisect.bisect_left(keys, end)]

    def _range(self, start: str, end: str) -> list[tuple[str, str]]:
        """``(key, value)`` of every key in ``[start, end)`` as this transaction sees it, by key."""
        kvs, _, rev = self._kv.range(start, end)
        self._ranges.append((start, end, rev))
        pending = self._writes_in(start, end) if self._writes else ()
        if not pending:
            return [(kv[0], kv[1]) for kv in kvs]
        merged = {kv[0]: kv[1] for kv in kvs}
        for k in pending:
            v = self._writes[k]
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        return sorted(merged.items())

    def _prefix(self, prefix: str) -> list[tuple[str, str]]:
        return self._range(prefix, prefix_end(prefix))

    def _next_seq(self, n: int = 1) -> int:
        """The first of ``n`` new creation sequence numbers."""
        if self._seq is None:
            self._seq = int(self._get("seq") or 0)
        first = self._seq + 1
        self._seq += n
        self._put("seq", str(self._seq))
        return first

    def commit(self) -> int | None:
        """Write everything as one CAS txn; returns its revision (None when nothing was written).
        Raises TxnConflict if a key or key range read here changed meanwhile."""
        if not self._writes:
            return None
        compares = [Compare(k, "mod", "==", rev) for k, rev in self._reads.items()]
        compares += [Compare(s, "mod", "<", rev + 1, range_end=e) for s, e, rev in self._ranges]
        covered: set[str] = set()
        spans = []
        for start, end in self._span_deletes:
            inside = self._writes_in(start, end)
            if all(self._writes[k] is None for k in inside):   # nothing re-put there since
                spans.append(Delete(start, end))
                covered.update(inside)
        ops = spans + [Delete(k) if v is None else Put(k, v) for k, v in self._writes.items() if k not in covered]
        result = self._kv.txn(compares, ops)
        if not result.succeeded:
            raise TxnConflict("the store changed while the transaction ran; re-read and retry")
        self._writes = {}
        return result.revision

    # ------------------------------------------------------------------ networks
    def put_network(self, net: Network) -> None:
        self._put_named("networks", net, f"network with name {net.name} already exists")

    def delete_network(self, net_id: str) -> None:
        for k, _ in self._prefix(f"leases/{net_id}/"):
            self._delete(k)
        self._delete_named("networks", net_id)

    def networks(self) -> list[Network]:
        return self._named_list("networks", Network)

    # ------------------------------------------------------------------ endpoints
    def put_endpoint(self, ep: Endpoint) -> None:
        self._put_named("endpoints", ep, f"the endpoint name {ep.name} is already in use")

    def delete_endpoint(self, ep_id: str) -> None:
        self.delete_ports(ep_id)
        for att in self.attachments(ep_id=ep_id):
            if self.lease_holder(att.network_id, att.ip) == ep_id:
                self.release(att.network_id, att.ip)
        for k, _ in self._prefix(f"attachments/{ep_id}/"):
            self._delete(k)
        self._delete_named("endpoints", ep_id)

    def endpoints(self) -> list[Endpoint]:
        return self._named_list("endpoints", Endpoint)

    # records with a unique name: the record and its name index change together
    def _put_named(self, kind, rec, conflict_message):
        key = f"{kind}/{rec.id}"
        holder = self._get(f"names/{kind}/{rec.name}")
        if holder is not None and holder != rec.id:
            raise Conflict(conflict_message)
        old = self._get(key)
        if old is None:
            seq = self._next_seq()
        else:
            seq, old_data = old.split(" ", 1)
            old_name = json.loads(old_data)["name"]
            if old_name != rec.name:
                self._delete(f"names/{kind}/{old_name}")
        self._put(key, f"{seq} {_dump(rec)}")
        self._put(f"names/{kind}/{rec.name}", rec.id)

    def _delete_named(self, kind, rec_id):
        old = self._get(f"{kind}/{rec_id}")
        if old is not None:
            self._delete(f"names/{kind}/{json.loads(old.split(' ', 1)[1])['name']}")
            self._delete(f"{kind}/{rec_id}")

    def _named_list(self, kind, cls):
        recs = [_seq_and_record(v, cls) for _, v in self._prefix(f"{kind}/")]
        recs.sort(key=lambda sr: sr[0])
        return [r for _, r in recs]

    # ------------------------------------------------------------------ attachments
    def put_attachment(self, att: Attachment) -> None:
        self._put(f"attachments/{att.endpoint_id}/{att.network_id}", _dump(att))

    def delete_attachment(self, ep_id: str, net_id: str) -> None:
        self._delete(f"attachments/{ep_id}/{net_id}")

    def attachments(self, ep_id: str | None = None, net_id: str | None = None) -> list[Attachment]:
        if ep_id is not None and net_id is not None:
            v = self._get(f"attachments/{ep_id}/{net_id}")
            rows = [v] if v is not None else []
        else:
            rows = [v for k, v in self._prefix(f"attachments/{ep_id}/" if ep_id is not None else "attachments/")
                    if net_id is None or k.rsplit("/", 1)[1] == net_id]
        atts = [Attachment(**json.loads(v)) for v in rows]
        return sorted(atts, key=lambda a: (a.endpoint_id, a.index))

    # ------------------------------------------------------------------ IPAM leases
    def lease(self, net_id: str, ip: str, owner: str) -> None:
        """Record ``ip`` as taken by ``owner``; raise Conflict if someone holds it."""
        key = f"leases/{net_id}/{ip}"
        holder = self._get(key)
        if holder is not None:
            if holder == owner:
                return
            raise Conflict(f"address {ip} is already in use")
        self._put(key, owner)

    def lease_holder(self, net_id: str, ip: str) -> str | None:
        """Who holds ``ip`` on ``net_id`` (None: nobody); one key read."""
        return self._get(f"leases/{net_id}/{ip}")

    def release(self, net_id: str, ip: str) -> None:
        self._delete(f"leases/{net_id}/{ip}")

    def leases(self, net_id: str | None = None) -> list[tuple[str, str, str]]:
        """[(network_id, ip, owner), ...]"""
        out = []
        for k, owner in self._prefix(f"leases/{net_id}/" if net_id is not None else "leases/"):
            net, ip = k[len("leases/"):].split("/", 1)
            out.append((net, ip, owner))
        return out

    # ------------------------------------------------------------------ port mappings
    def _count_ports(self, delta: int) -> None:
        if delta:
            self._put("counts/ports", str(int(self._get("counts/ports") or 0) + delta))

    def _put_port_rows(self, rows, keys=None) -> None:
        """Write the records and the by-endpoint index of ``rows`` (already checked free;
        ``keys`` are their record keys when the caller built them already)."""
        seq = self._next_seq(len(rows))
        if keys is None:
            keys = [_port_key(proto, port, host_ip) for _, proto, host_ip, port, _ in rows]
        chunks: dict[tuple[str, int], list[str]] = {}     # (endpoint, first seq) -> index lines
        first_of: dict[str, tuple[int, int]] = {}         # endpoint -> (first seq, lines so far)
        self._sorted_writes = None
        writes = self._writes
        for key, (ep_id, proto, host_ip, port, cport) in zip(keys, rows):
            writes[key] = f"{seq} {ep_id} {cport}"
            start, n = first_of.get(ep_id, (seq, 0))
            if n == INDEX_CHUNK:
                start, n = seq, 0
            first_of[ep_id] = (start, n + 1)
            chunks.setdefault((ep_id, start), []).append(f"{proto} {host_ip} {port} {cport}\n")
            seq += 1
        for (ep_id, start), lines in chunks.items():
            writes[f"endpoint-ports/{ep_id}/{start:012d}"] = "".join(lines)
        self._count_ports(len(rows))

    def put_port(self, pm: PortMapping) -> None:
        """Raise Conflict if the (proto, host_ip, host_port) key is taken."""
        if self._get(_port_key(pm.proto, pm.host_port, pm.host_ip)) is not None:
            raise Conflict(f"bind for {pm.host_ip}:{pm.host_port}/{pm.proto} failed: port is already allocated")
        self._put_port_rows([(pm.endpoint_id, pm.proto, pm.host_ip, pm.host_port, pm.container_port)])

    def put_ports(self, rows) -> None:
        """Many mappings at once, as ``(endpoint_id, proto, host_ip, host_port, container_port)``
        tuples (publishing a range of thousands of ports creates no record objects). The keys
        already taken are read as one key range per protocol, not one read per port."""
        rows = list(rows)
        spans: dict[str, list[int]] = {}
        for _, proto, _, port, _ in rows:
            span = spans.setdefault(proto, [port, port])
            if port < span[0]:
                span[0] = port
            elif port > span[1]:
                span[1] = port
        taken = set()
        for proto, (lo, hi) in spans.items():
            taken.update(k for k, _ in self._range(f"ports/{proto}/{lo:05d}/", f"ports/{proto}/{hi + 1:05d}/"))
        keys = [f"ports/{proto}/{port:05d}/{host_ip}" for _, proto, host_ip, port, _ in rows]
        if not taken.isdisjoint(keys) or len(set(keys)) != len(keys):
            raise Conflict("bind failed: a port in the range is already allocated")
        self._put_port_rows(rows, keys)

    def _index_lines(self, ep_id: str):
        """``(index key, [(proto, host_ip, host_port, container_port) as text])`` of ``ep_id``, in
        creation order."""
        return [(k, [line.split(" ") for line in v.splitlines()]) for k, v in self._prefix(f"endpoint-ports/{ep_id}/")]

    def delete_ports(self, ep_id: str) -> None:
        keys = []
        for k, lines in self._index_lines(ep_id):
            keys += [_port_key(proto, int(host_port), host_ip) for proto, host_ip, host_port, _ in lines]
            self._delete(k)
        if len(keys) > 1 and self._writes.keys().isdisjoint(keys):
            # All of them are in the backend (the index says so and this transaction did not
            # write them): if their key span holds nothing else, one range delete does it.
            start, end = min(keys), max(keys) + "\0"
            _, count, rev = self._kv.range(start, end, count_only=True)
            self._ranges.append((start, end, rev))
            if count == len(keys):
                self._span_deletes.append((start, end))
        for key in keys:
            self._delete(key)
        self._count_ports(-len(keys))

    def ports(self, ep_id: str | None = None) -> list[PortMapping]:
        if ep_id:
            return [PortMapping(ep_id, proto, host_ip, int(host_port), int(cport))
                    for _, lines in self._index_lines(ep_id) for proto, host_ip, host_port, cport in lines]
        rows = []
        for k, v in self._prefix("ports/"):
            _, proto, host_port, host_ip = k.split("/", 3)
            seq, ep, cport = v.split(" ")
            rows.append((int(seq), ep, proto, host_ip, int(host_port), int(cport)))
        rows.sort()
        return [PortMapping(*r[1:]) for r in rows]

    def port_count(self) -> int:
        return int(self._get("counts/ports") or 0)

    def host_ports_in(self, proto: str, lo: int, hi: int) -> list[tuple[str, int]]:
        """``(host_ip, host_port)`` of the ``proto`` mappings with ``lo <= host_port <= hi`` (what a
        new mapping in that range can collide with), read as one key range."""
        out = []
        for k, _ in self._range(f"ports/{proto}/{lo:05d}/", f"ports/{proto}/{hi + 1:05d}/"):
            _, _, port, host_ip = k.split("/", 3)
            out.append((host_ip, int(port)))
        return out

    # ------------------------------------------------------------------ metadata
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        v = self._get(f"meta/{key}")
        return default if v is None else v

    def set_meta(self, key: str, value: str) -> None:
        self._put(f"meta/{key}", value)

    # ------------------------------------------------------------------ lookups
    def network(self, ref: str) -> Network | None:
        """By exact name, exact id, or unique id prefix (>= 3 chars), like Docker."""
        return self._by_name_or_id("networks", Network, ref) or _by_prefix(self.networks(), ref)

    def endpoint(self, ref: str) -> Endpoint | None:
        return self._by_name_or_id("endpoints", Endpoint, ref) or _by_prefix(self.endpoints(), ref)

    def network_named(self, name: str) -> Network | None:
        """The network whose name is exactly ``name`` (one key read: the name index)."""
        return self._named("networks", Network, name)

    def endpoint_named(self, name: str) -> Endpoint | None:
        return self._named("endpoints", Endpoint, name)

    def _named(self, kind, cls, name):
        rec_id = self._get(f"names/{kind}/{name}")
        return self._record(kind, cls, rec_id) if rec_id else None

    def _record(self, kind, cls, rec_id):
        v = self._get(f"{kind}/{rec_id}")
        return _seq_and_record(v, cls)[1] if v is not None else None

    def _by_name_or_id(self, kind, cls, ref):
        """Exact name first, then exact id: two key reads, where reading every record of a host
        with 1,000 endpoints costs milliseconds on every lookup."""
        if "/" in ref:
            return None
        return self._named(kind, cls, ref) or self._record(kind, cls, ref)


def _by_prefix(items, ref):
    """The one record whose id starts with ``ref`` (>= 3 chars), else None."""
    if len(ref) >= 3:
        hits = [it for it in items if it.id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
    return None


class Store:
    """The domain store over a revisioned backend, in one scope (a host's, by default "local")."""

    def __init__(self, kv: KV, host: str = "local"):
        self.kv = kv
        self.records = Scoped(kv, host_scope(host))
        with self.transaction() as tx:
            if tx.get_meta("schema_version") is None:
                tx.set_meta("schema_version", str(SCHEMA_VERSION))

    @contextlib.contextmanager
    def transaction(self):
        with self.records.exclusive():
            tx = Transaction(self.records)
            yield tx
            tx.commit()

    def run(self, fn, attempts: int = 10):
        """``fn(tx)`` in a transaction, re-run from scratch when its commit loses a race."""
        for i in range(attempts):
            try:
                with self.transaction() as tx:
                    return fn(tx)
            except TxnConflict:
                if i == attempts - 1:
                    raise

    def close(self) -> None:
        self.kv.close()


class RecordCache:
    """This host's networks, endpoints, attachments and nat rules as of the store's latest
    revision, kept current by the watch: ``read()`` costs O(what changed since the last read)
    plus copying the lists (a snapshot of 1,000 endpoints is not decoded, sorted or indexed again
    for every operation).

    Contract: the lists ``read`` returns are new on every call and ordered like the
    transaction's lists (creation order; attachments by endpoint id, then index); the records
    in them are shared between reads and must not be mutated. ``read_indexed`` adds lookups by
    id (``DesiredState``'s index: its dicts are new on every call, their values shared). A
    compacted revision (the event log no longer reaches back to the last read) reloads
    everything.

    Creation order is the tables' insertion order: a new record's sequence number is above every
    earlier one (commits are serialized on the "seq" key), an update keeps its place, and a
    reload inserts by sequence number.
    """

    WATCHED = ("networks/", "endpoints/", "attachments/")
    NAT_KEY = "meta/nat_rules"

    def __init__(self, store: "Store"):
        self.store = store
        self.revision: int | None = None
        self._clear()

    def _clear(self) -> None:
        self._nets: dict[str, Network] = {}                 # creation order
        self._eps: dict[str, Endpoint] = {}                 # creation order
        self._atts: dict[str, dict[str, Attachment]] = {}   # endpoint id -> network id -> att
        self._atts_of: dict[str, tuple[Attachment, ...]] = {}   # endpoint id -> by index
        self._sharers: dict[str, dict[str, Endpoint]] = {}  # shared endpoint id -> sharers
        self._flat: list[Attachment] | None = None          # every attachment, sorted
        self._nat = ""

    def read(self) -> tuple[list[Network], list[Endpoint], list[Attachment], str]:
        self._catch_up()
        return list(self._nets.values()), list(self._eps.values()), list(self._sorted_atts()), self._nat

    def read_indexed(self) -> tuple[list[Network], list[Endpoint], list[Attachment], str, dict]:
        """``read()`` and the index ``DesiredState`` would otherwise build from the lists."""
        nets, eps, atts, nat = self.read()
        index = {"nets": dict(self._nets), "eps": dict(self._eps), "atts": dict(self._atts_of),
                 "sharers": {k: list(v.values()) for k, v in self._sharers.items()}}
        return nets, eps, atts, nat, index

    def _sorted_atts(self) -> list[Attachment]:
        if self._flat is None:
            self._flat = [a for ep_id in sorted(self._atts_of) for a in self._atts_of[ep_id]]
        return self._flat

    def _catch_up(self) -> None:
        kv = self.store.records
        if self.revision is None:
            self._reload()
            return
        now = kv.revision()
        if now == self.revision:
            return
        try:
            events = [e for p in self.WATCHED for e in kv.watch_prefix(p, self.revision + 1)]
            events += kv.watch(self.NAT_KEY, self.revision + 1)
        except Compacted:
            self._reload()
            return
        for e in sorted((e for e in events if e.revision <= now), key=lambda e: e.revision):
            self._apply(e.type == "put", e.kv.key, e.kv.value)
        self.revision = now

    def _reload(self) -> None:
        kv = self.store.records
        with kv.exclusive():            # nobody writes between the revision and the reads
            rev = kv.revision()
            rows = {p: kv.get_prefix(p)[0] for p in self.WATCHED + (self.NAT_KEY,)}
        self._clear()
        for p in ("networks/", "endpoints/"):      # inserted in creation order
            for k in sorted(rows.pop(p), key=lambda k: int(k.value.partition(" ")[0])):
                self._apply(True, k.key, k.value)
        for kvs in rows.values():
            for k in kvs:
                self._apply(True, k.key, k.value)
        self.revision = rev

    def _apply(self, put: bool, key: str, value: str) -> None:
        kind, _, rest = key.partition("/")
        if key == self.NAT_KEY:
            self._nat = value if put else ""
        elif kind == "networks":
            if put:
                self._nets[rest] = _seq_and_record(value, Network)[1]
            else:
                self._nets.pop(rest, None)
        elif kind == "endpoints":
            self._endpoint_changed(rest, _seq_and_record(value, Endpoint)[1] if put else None)
        elif kind == "attachments":
            ep_id, _, net_id = rest.partition("/")
            of = self._atts.setdefault(ep_id, {})
            if put:
                of[net_id] = Attachment(**json.loads(value))
            else:
                of.pop(net_id, None)
            if of:
                self._atts_of[ep_id] = tuple(sorted(of.values(), key=lambda a: a.index))
            else:
                self._atts.pop(ep_id, None)
                self._atts_of.pop(ep_id, None)
            self._flat = None

    def _endpoint_changed(self, ep_id: str, ep: Endpoint | None) -> None:
        """Put (``ep``) or delete (None) one endpoint, keeping its place and the sharer index."""
        old = self._eps.get(ep_id)
        if old is not None and ep is not None and old.shares == ep.shares:
            self._eps[ep_id] = ep
            if ep.shares:
                self._sharers[ep.shares][ep_id] = ep     # keeps its place
            return
        if old is not None and old.shares:
            sharers = self._sharers.get(old.shares, {})
            sharers.pop(ep_id, None)
            if not sharers:
                self._sharers.pop(old.shares, None)
        if ep is None:
            self._eps.pop(ep_id, None)
            return
        self._eps[ep_id] = ep
        if ep.shares:
            self._sharers.setdefault(ep.shares, {})[ep_id] = ep
