"""BPF_PROG_TEST_RUN from Python: the kernel runs a loaded program on a buffer we hand it.

Used by the program tests (tests/ebpf) and the per-program cost benchmark (bench/micro). Nothing
is attached to an interface and nothing is sent. ``repeat`` runs the program that many times in
the kernel and reports the average duration per run.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from . import libbpf


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts of libbpf 1.1 (/usr/include/bpf/bpf.h)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class SkBuff(ctypes.Structure):
    """struct __sk_buff (uapi/linux/bpf.h), only used as the test-run ctx. The kernel accepts
    non-zero values only in mark, priority, ingress_ifindex, ifindex, cb, tstamp, wire_len,
    gso_segs, gso_size and hwtstamp."""

    _fields_ = [
        ("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32), ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32), ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32), ("cb", ctypes.c_uint32 * 5), ("hash", ctypes.c_uint32),
        ("tc_classid", ctypes.c_uint32), ("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
        ("napi_id", ctypes.c_uint32), ("family", ctypes.c_uint32), ("remote_ip4", ctypes.c_uint32),
        ("local_ip4", ctypes.c_uint32), ("remote_ip6", ctypes.c_uint32 * 4),
        ("local_ip6", ctypes.c_uint32 * 4), ("remote_port", ctypes.c_uint32),
        ("local_port", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
        ("flow_keys", ctypes.c_uint64), ("tstamp", ctypes.c_uint64), ("wire_len", ctypes.c_uint32),
        ("gso_segs", ctypes.c_uint32), ("sk", ctypes.c_uint64), ("gso_size", ctypes.c_uint32),
        ("tstamp_type", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 3), ("hwtstamp", ctypes.c_uint64),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md (uapi/linux/bpf.h) as an XDP test-run ctx: data must be 0 and data_end the
    packet's length (prog_test_run fills both), ingress_ifindex an existing device of the
    caller's netns with rx_queue_index below its queue count, egress_ifindex 0."""

    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32), ("data_meta", ctypes.c_uint32),
                ("ingress_ifindex", ctypes.c_uint32), ("rx_queue_index", ctypes.c_uint32),
                ("egress_ifindex", ctypes.c_uint32)]


assert ctypes.sizeof(SkBuff) == 192 and SkBuff.ifindex.offset == 40 and SkBuff.hwtstamp.offset == 184
assert ctypes.sizeof(XdpMd) == 24
assert ctypes.sizeof(BpfTestRunOpts) == 80


class RunRefused(OSError):
    """The kernel refused the test run (errno in .errno)."""


@dataclass
class RunResult:
    retval: int
    out: bytes
    duration_ns: int   # average per repetition


OUT_MAX = 4096


def prog_test_run(prog_fd: int, packet: bytes, *, ifindex: int | None = None,
             ctx: SkBuff | XdpMd | None = None, repeat: int = 1) -> RunResult:
    """One BPF_PROG_TEST_RUN (``repeat`` runs). ``ifindex`` builds a __sk_buff ctx with that
    ifindex (TC programs only). Raises RunRefused when the kernel refuses the run."""
    if ifindex is not None:
        ctx = SkBuff(ifindex=ifindex)
    data_in = ctypes.create_string_buffer(bytes(packet), len(packet))
    data_out = ctypes.create_string_buffer(OUT_MAX)
    opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts),
                          data_in=ctypes.cast(data_in, ctypes.c_void_p),
                          data_out=ctypes.cast(data_out, ctypes.c_void_p),
                          data_size_in=len(packet), data_size_out=OUT_MAX, repeat=repeat)
    if isinstance(ctx, XdpMd):
        ctx.data, ctx.data_end = 0, len(packet)
    if ctx is not None:
        opts.ctx_in = ctypes.addressof(ctx)
        opts.ctx_size_in = ctypes.sizeof(ctx)
    rc = libbpf.lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))   # libbpf.so.1, via libbcc
    if rc != 0:
        err = libbpf.last_error(rc)
        raise RunRefused(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return RunResult(opts.retval, data_out.raw[:opts.data_size_out], opts.duration)


def run(prog_fd: int, packet: bytes, **kw) -> tuple[int, bytes]:
    """(return value, output bytes) of one test run."""
    r = prog_test_run(prog_fd, packet, **kw)
    return r.retval, r.out


def bench(prog_fd: int, packet: bytes, repeat: int = 100_000, **kw) -> int:
    """Average ns per run of ``repeat`` in-kernel repetitions (note: the maps count every one)."""
    return prog_test_run(prog_fd, packet, repeat=repeat, **kw).duration_ns
