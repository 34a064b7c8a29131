"""glibc allocator settings that keep large tensors out of fresh memory maps (DESIGN §6: dynamic layers 2–4×
faster on the machine measured). The `padnet` command re-executes itself once with them unless
`PADNET_ALLOCATOR=0`; `padnet bench` measures with and without them."""

ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "2147483647",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
