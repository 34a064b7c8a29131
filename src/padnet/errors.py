"""User-facing error types.

Every mistake a user can make (bad name, bad value, missing or corrupt file) raises a subclass of
[`PadnetError`][padnet.errors.PadnetError]; the command line prints its message on one line and exits with status 2.
A renamed name keeps working for one release through a shim that warns with
[`deprecated`][padnet.errors.deprecated].
"""

import math
import warnings


class PadnetError(Exception):
    """Base class of errors caused by user input; the CLI reports them without a traceback."""


class ConfigError(PadnetError, ValueError):
    """An unknown name or an out-of-range value in a configuration or call."""


class DataError(PadnetError):
    """A data file is missing, truncated, malformed or fails its SHA-256 check."""


class CheckpointError(PadnetError):
    """A checkpoint is unreadable, corrupt or belongs to another architecture."""


MAX_LOSS = (
    1e4  # a training loss above this has diverged: cross-entropy at chance is ln(classes), 6.9 for 1000
)


class NonFiniteLossError(PadnetError):
    """Training produced a NaN, infinite or diverged (above [`MAX_LOSS`][padnet.errors.MAX_LOSS]) loss, usually from a learning rate
    too large for the model."""

    def __init__(self, value: float, step: int):
        what = (
            f"non-finite loss ({value})"
            if not math.isfinite(value)
            else (f"diverged loss ({value:.3g}, above {MAX_LOSS:g})")
        )
        super().__init__(f"{what} at step {step}; lower the learning rate")


class NonFiniteStateError(PadnetError):
    """Training left a NaN or infinite value in the model or optimiser state; no checkpoint was written."""

    def __init__(self, key: str, last_good):
        where = (
            f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written before"
        )
        super().__init__(
            f"non-finite values in {key}; this checkpoint was not written and {where} "
            "(resume from it with a lower learning rate)"
        )


def user_message(exc: BaseException) -> str:
    """The one line to show for a user error. An error raised in a DataLoader worker arrives with the worker's
    traceback in its message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); its own
    message is the traceback's last line, after the exception's name."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name = type(exc).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return one_line(text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def one_line(text: str) -> str:
    """`text` on one line: runs of white space (line breaks included) become one space, and any other
    character that is not printable is written as its escape (`\\x85`), so input echoed in a message cannot
    split it."""
    text = " ".join(text.split()) if any(c.isspace() and c != " " for c in text) else text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown(value) -> str:
    """`value` for a one-line message: as it is when it is a printable string, else its repr (so a key with a
    line break or a control character, read from a file, cannot split the message)."""
    return (
        value
        if isinstance(value, str) and value.isprintable() and value.strip() == value and value
        else repr(value)
    )


def check_choice(kind: str, value, choices) -> None:
    """Raise ConfigError `unknown <kind> <value>; choose from ...` unless `value` is in `choices`."""
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}; choose from {', '.join(choices)}")


def check_seed(seed) -> None:
    """Raise ConfigError unless `seed` is an integer in [0, 2**63) (what `torch.manual_seed` takes)."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ConfigError(f"seed must be in [0, 2**63), got {seed!r}")


def check_module(model, entry: str) -> None:
    """Raise ConfigError unless `model` is a torch `nn.Module`; `entry` names the function that needs it.
    A name (`"resnet18"`) gets the call that builds that model."""
    from torch import nn

    if not isinstance(model, nn.Module):
        hint = f"; build one with padnet.create_model({model!r})" if isinstance(model, str) else ""
        raise ConfigError(f"{entry} needs an nn.Module, got {type(model).__name__}{hint}")


def deprecated(old: str, new: str, since: str = "0.2.0", removed: str = "0.3.0", stacklevel: int = 1) -> None:
    """Warn that `old` is deprecated in favour of `new`: the one helper behind every renamed name's shim.

    Issues a `FutureWarning` (shown by default, unlike `DeprecationWarning`, so users of a script see it too)
    with the message "`old` is deprecated since `since` and will be removed in `removed`; use `new` instead".
    Call it first thing in the shim, then do what `new` does:

    ```python
    def load_pretrained(model, source, model_name):
        deprecated("padnet.models.load_pretrained", "padnet.models.load_pretrained_weights")
        return load_pretrained_weights(model, source, model_name)
    ```

    An old value of an option is handled the same way: warn, then carry on with the new value.

    Args:
        old: the deprecated name or value as the user wrote it (`"padnet.models.load_pretrained"`,
            `"granularity='column'"`).
        new: what to write instead, named so it can be searched for.
        since: the release that deprecated `old`.
        removed: the release that removes `old` (one release after `since`).
        stacklevel: which frame the warning points at: 1 (default) is the code that called the shim, the
            user's line; add one per padnet frame between the user and the shim.
    """
    warnings.warn(
        f"{old} is deprecated since {since} and will be removed in {removed}; use {new} instead",
        FutureWarning,
        stacklevel=stacklevel + 2,  # past this function and the shim that called it
    )
