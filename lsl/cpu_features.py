"""Whether this machine's CPU does bf16 arithmetic in hardware, read from the kernel's CPU flags."""

from __future__ import annotations

from pathlib import Path

# x86: AVX-512 BF16 or AMX-BF16; aarch64: the ARMv8.6 BF16 extension ("bf16" among /proc/cpuinfo's Features).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """True when the CPU flags name a bf16 extension, False when they do not, None when there are no flags to
    read (not Linux). Without one, bf16 autocast on the CPU converts to and from float32 around every op, so it
    is slower than float32 rather than faster (docs/speed.md)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return None
    return not BF16_FLAGS.isdisjoint(flags)
