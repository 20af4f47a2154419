"""The one set of ctypes bindings of the BPF system-call wrappers dockline calls directly.

They come from libbcc.so.0 (bcc's own wrappers: bpf_lookup_elem, bpf_update_elem,
bpf_lookup_batch...) and the libbpf.so.1 it links (bpf_obj_get, bpf_obj_get_info_by_fd,
bpf_prog_attach, bpf_prog_load, bpf_map_create, bpf_prog_test_run_opts...), resolved through one handle of libbcc.so.0 that this
module opens itself (so no argument type set here changes bcc's own bindings, and bcc itself is
not imported). Every function gets its argument and result types once, here; callers use
``lib()`` or the helpers below. Nothing here is in a per-packet path.

Return convention: libbpf 1.x returns ``-errno`` and also sets errno; libbcc's wrappers return
-1 with errno set. The library is opened with ``use_errno`` so ``ctypes.get_errno()`` holds it.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import DatapathError

_c_int, _c_uint, _c_u32, _c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_uint32, ctypes.c_void_p
_u32_p = ctypes.POINTER(ctypes.c_uint32)

BPF_OBJ_NAME_LEN = 16   # uapi/linux/bpf.h: object names, NUL included


class BpfProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts of libbpf 1.1 (bpf/bpf.h, not installed: size asserted below);
    ``sz`` tells later libbpf versions where it ends."""

    _fields_ = [("sz", ctypes.c_size_t), ("attempts", _c_int),
                ("expected_attach_type", _c_u32), ("prog_btf_fd", _c_u32),
                ("prog_flags", _c_u32), ("prog_ifindex", _c_u32),
                ("kern_version", _c_u32), ("attach_btf_id", _c_u32),
                ("attach_prog_fd", _c_u32), ("attach_btf_obj_fd", _c_u32),
                ("fd_array", _c_void_p), ("func_info", _c_void_p),
                ("func_info_cnt", _c_u32), ("func_info_rec_size", _c_u32),
                ("line_info", _c_void_p), ("line_info_cnt", _c_u32),
                ("line_info_rec_size", _c_u32), ("log_level", _c_u32),
                ("log_size", _c_u32), ("log_buf", ctypes.c_char_p)]


class BpfMapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts of libbpf 1.1 (bpf/bpf.h, not installed: size asserted below)."""

    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", _c_u32), ("btf_key_type_id", _c_u32),
                ("btf_value_type_id", _c_u32), ("btf_vmlinux_value_type_id", _c_u32),
                ("inner_map_fd", _c_u32), ("map_flags", _c_u32),
                ("map_extra", ctypes.c_uint64), ("numa_node", _c_u32),
                ("map_ifindex", _c_u32)]


# x86-64 sizes and a few offsets of libbpf 1.1's structs (its bpf/bpf.h is not installed, so no
# compile can check them; these catch a dropped or resized field)
assert ctypes.sizeof(BpfProgLoadOpts) == 104 and BpfProgLoadOpts.fd_array.offset == 48
assert BpfProgLoadOpts.kern_version.offset == 28 and BpfProgLoadOpts.log_buf.offset == 96
assert ctypes.sizeof(BpfMapCreateOpts) == 48 and BpfMapCreateOpts.map_extra.offset == 32

#: function -> (argument types, result type); the prototypes of libbcc's libbpf.h and libbpf 1.1's
#: bpf/bpf.h (bpf_prog_test_run_opts's struct is prog_run.BpfTestRunOpts, passed as a pointer)
PROTOTYPES = {
    "bpf_obj_get": ([ctypes.c_char_p], _c_int),
    "bpf_obj_pin": ([_c_int, ctypes.c_char_p], _c_int),
    # (prog type, name, license, struct bpf_insn[] in host order, instruction count, opts)
    "bpf_prog_load": ([_c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                       ctypes.POINTER(BpfProgLoadOpts)], _c_int),
    # (map type, name, key size, value size, max entries, opts)
    "bpf_map_create": ([_c_int, ctypes.c_char_p, _c_u32, _c_u32, _c_u32,
                        ctypes.POINTER(BpfMapCreateOpts)], _c_int),
    "bpf_obj_get_info_by_fd": ([_c_int, _c_void_p, _u32_p], _c_int),
    "bpf_lookup_elem": ([_c_int, _c_void_p, _c_void_p], _c_int),
    "bpf_update_elem": ([_c_int, _c_void_p, _c_void_p, ctypes.c_ulonglong], _c_int),
    "bpf_delete_elem": ([_c_int, _c_void_p], _c_int),
    "bpf_get_next_key": ([_c_int, _c_void_p, _c_void_p], _c_int),
    "bpf_lookup_batch": ([_c_int, _u32_p, _u32_p, _c_void_p, _c_void_p, _u32_p], _c_int),
    # (fd, keys, values, count in/out): BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH
    "bpf_update_batch": ([_c_int, _c_void_p, _c_void_p, _u32_p], _c_int),
    "bpf_delete_batch": ([_c_int, _c_void_p, _u32_p], _c_int),
    "bpf_prog_attach": ([_c_int, _c_int, _c_int, _c_uint], _c_int),
    "bpf_prog_detach2": ([_c_int, _c_int, _c_int], _c_int),
    "bpf_prog_query": ([_c_int, _c_int, _c_uint, _u32_p, _c_void_p, _u32_p], _c_int),
    "bpf_prog_get_fd_by_id": ([_c_u32], _c_int),
    "bpf_prog_test_run_opts": ([_c_int, _c_void_p], _c_int),
}

_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbcc.so.0 with every function of ``PROTOTYPES`` typed (opened on first use)."""
    global _lib
    if _lib is None:
        try:
            handle = ctypes.CDLL("libbcc.so.0", use_errno=True)
        except OSError as e:
            raise DatapathError(f"cannot load libbcc.so.0 (install python3-bpfcc): {e}") from None
        for name, (argtypes, restype) in PROTOTYPES.items():
            fn = getattr(handle, name)
            fn.argtypes, fn.restype = argtypes, restype
        _lib = handle
    return _lib


def last_error(rc: int) -> int:
    """The errno of a failed call that returned ``rc`` (libbpf: -errno; libbcc: -1 and errno)."""
    return -rc if rc < -1 else (ctypes.get_errno() or errno.EIO)


def obj_get(path: str) -> int:
    """An fd of the BPF object pinned at ``path``; DatapathError naming the path if it cannot."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        err = ctypes.get_errno() or errno.ENOENT
        raise DatapathError(f"cannot open pinned BPF object {path}: {os.strerror(err)}")
    return fd


def obj_get_if_pinned(path: str) -> int | None:
    """An fd of the BPF object pinned at ``path``, or None where none can be opened (nothing
    pinned there, or not a BPF object): for callers that create what is missing."""
    fd = lib().bpf_obj_get(str(path).encode())
    return fd if fd >= 0 else None


class BpfProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (uapi/linux/bpf.h), up to ``name``; the kernel fills
    min(our size, its size). __aligned_u64 fields are c_uint64 (8-byte aligned on x86-64). The tag
    hashes the instructions with map fds zeroed: the same code has the same tag whatever its maps."""

    _fields_ = [("type", _c_u32), ("id", _c_u32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", _c_u32), ("xlated_prog_len", _c_u32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", _c_u32), ("nr_map_ids", _c_u32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class BpfMapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (uapi/linux/bpf.h), up to ``name``."""

    _fields_ = [("type", _c_u32), ("id", _c_u32), ("key_size", _c_u32), ("value_size", _c_u32),
                ("max_entries", _c_u32), ("map_flags", _c_u32), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


def _info(fd: int, info, what: str):
    n = _c_u32(ctypes.sizeof(info))
    rc = lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(n))
    if rc != 0:
        raise DatapathError(f"cannot read the {what} info of BPF fd {fd}: {os.strerror(last_error(rc))}")
    return info


def prog_info(fd: int) -> BpfProgInfo:
    """BPF_OBJ_GET_INFO_BY_FD of a program fd (its id, name, ...)."""
    return _info(fd, BpfProgInfo(), "program")


def map_info(fd: int) -> BpfMapInfo:
    """BPF_OBJ_GET_INFO_BY_FD of a map fd (its key and value sizes, max_entries, name, ...)."""
    return _info(fd, BpfMapInfo(), "map")
