"""The ranges of the dynamic layers' size options, defined once: every layer, `PadConfig` and the readers of
saved models check them here."""

from __future__ import annotations

from padnet.errors import ConfigError

# the range of each size option of the layers; a value read from a file or a flag must not ask for a huge
# allocation. A layer may narrow the low end (ODConv and DCD need a hidden layer: reduction >= 1).
OPTION_RANGES = {"num_kernels": (1, 64), "reduction": (0, 4_096)}


def check_size_option(name: str, value, low: int | None = None) -> int:
    """`value` of the size option `name` (`"num_kernels"`: k; `"reduction"`: r of a squeeze branch) if it is an
    integer in its range of [`OPTION_RANGES`][padnet.layers.options.OPTION_RANGES] (from `low` when given).

    Raises:
        ConfigError: not an integer, or out of range, in one line.
    """
    start, high = OPTION_RANGES[name]
    start = start if low is None else low
    if isinstance(value, bool) or not isinstance(value, int) or not start <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{start}, {high}], got {value!r}")
    return value
