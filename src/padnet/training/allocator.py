"""glibc allocator settings that keep large tensors out of fresh memory maps (DESIGN §6: dynamic layers 2–4×
faster on the machine measured). The `padnet` command re-executes itself once with them unless
`PADNET_ALLOCATOR=0` or the command is one of `MEMORY_BOUND_COMMANDS`; `padnet bench` measures with and without
them."""

import ctypes
import functools

ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "2147483647",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}

# commands whose peak memory matters more than allocation speed: the settings above never return freed memory to
# the system, so memory would grow with every layer compressed (measured: 11.2 GiB instead of about 2 for 32 layers)
MEMORY_BOUND_COMMANDS = ("moe-compress",)


def return_freed_memory() -> None:
    """Give the memory freed so far back to the system (glibc's `malloc_trim`), so that a loop which frees what
    each step built — one decoder layer at a time — stays at one step's memory instead of keeping every freed
    fragment resident. Does nothing where the C library has no `malloc_trim`."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no C library to load symbols from (Windows has no CDLL(None))
        return None
