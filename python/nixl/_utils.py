"""nixl._utils -- NIXL's test helpers for raw host memory.

malloc_passthru(size) -> address of `size` bytes, page-aligned (free it with
free_passthru); ba_buf(addr, size) fills with 0xBA; verify_transfer(a, b,
size) compares two buffers: True when equal (a mismatch is logged with its
first differing offset)."""

import ctypes

from .logging import get_logger

logger = get_logger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.aligned_alloc.restype = ctypes.c_void_p
_libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]
_libc.memset.restype = ctypes.c_void_p
_libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]

_PAGE = 4096


def malloc_passthru(size: int) -> int:
    if size <= 0:
        raise ValueError("malloc_passthru: size must be positive")
    rounded = (size + _PAGE - 1) // _PAGE * _PAGE  # aligned_alloc wants a multiple of the alignment
    addr = _libc.aligned_alloc(_PAGE, rounded)
    if not addr:
        raise MemoryError("malloc_passthru: out of memory (%d bytes)" % size)
    return addr


def free_passthru(addr: int) -> None:
    if addr:
        _libc.free(addr)


def ba_buf(addr: int, size: int) -> None:
    _libc.memset(addr, 0xBA, size)


def verify_transfer(addr1: int, addr2: int, size: int) -> bool:
    if _libc.memcmp(addr1, addr2, size) == 0:
        return True
    a = ctypes.string_at(addr1, size)
    b = ctypes.string_at(addr2, size)
    first = next(i for i in range(size) if a[i] != b[i])
    logger.error("verify_transfer: buffers differ, first at offset %d (0x%02x != 0x%02x)", first, a[first], b[first])
    return False
