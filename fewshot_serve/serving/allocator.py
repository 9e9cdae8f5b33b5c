"""Keep freed memory in the process for reuse, rather than handing it back to the OS (glibc only).

Every inner step and query pass allocates activations of the same few sizes and frees them again.
By default glibc serves blocks above a threshold with fresh ``mmap`` pages and returns freed heap
to the OS, so the next pass page-faults the same memory back in. Where page faults are dear (the
2-core VM this was measured on, an AMD EPYC), touching a fresh 16 MB activation measured 15 ms against
1 ms for the multiplication that filled it. Kept for reuse instead, meta-training ran at 11.45
tasks/s for MAML and 15.05 for FOMAML against an erratic 7.6 and 10.2 under glibc's defaults
(``benchmarks/train_throughput.py`` with and without ``--default-allocator``), and ``fewshot-serve
train`` (Omniglot, MAML, 5-way 1-shot, meta-batch 32, one thread) took 2.88 s an iteration against
3.95-4.08 s.

The price is that the process keeps its peak memory until it exits, which suits a training run.
So the command line (``fewshot-serve``) opts in; importing the package changes nothing, and the web
app leaves glibc as it is (serving's smaller activations measured no gain from it in
``benchmarks/adapt_latency.py``). Under another C library (or an allocator preloaded in glibc's
place) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (glibc's maximum on 64-bit systems)
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the heap's top that stays with the process
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Make glibc keep and reuse freed memory (see the module's docstring); True where it applied.

    Both settings together: a trim threshold alone also freezes the mmap threshold at its 128 kB
    default, which measured slower than glibc's default behaviour.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own symbol: mallopt's parameters are glibc's
        return False
    mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return mmap_set and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
