"""Where data sets are looked for and cached."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the download cache root; default `~/.cache/padnet`.
CACHE_ENV = "PADNET_DATA"


def cache_root() -> Path:
    """The folder downloads are cached under: `$PADNET_DATA` if set and non-empty, else `~/.cache/padnet`.

    Read at call time (never at import), so changing the environment variable takes effect at once.
    """
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "padnet"
