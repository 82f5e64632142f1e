"""The C allocator's settings for a training process: freed tensor memory stays in the heap (glibc only)."""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_LARGEST_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def tune_host_allocator() -> bool:
    """Keep freed tensor memory in the process heap instead of handing it back to the kernel (glibc only).

    By default glibc serves large allocations with fresh ``mmap`` pages and trims the heap's top when it
    frees, so a CPU training step, which frees and reallocates the same activation buffers every step,
    page-faults on each of their pages again (docs/speed.md measures it). Fixed thresholds (up to
    32 MiB from the heap, trim only past 2 GiB free) keep those buffers mapped; the price is that the
    process can hold on to freed memory until it exits. Returns False, and changes nothing, where the C
    library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)
                and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
