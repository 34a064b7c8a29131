"""glibc allocator settings that keep large tensors out of fresh memory maps (DESIGN §6: dynamic layers 2–4×
faster on the machine measured). The `padnet` command re-executes itself once with them unless
`PADNET_ALLOCATOR=0` or the command is one of `MEMORY_BOUND_COMMANDS`; `padnet bench` measures with and without
them."""

ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "2147483647",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}

# commands whose peak memory matters more than allocation speed: the settings above never return freed memory to
# the system, so memory would grow with every layer compressed (measured: 11.2 GiB instead of about 2 for 32 layers)
MEMORY_BOUND_COMMANDS = ("moe-compress",)
