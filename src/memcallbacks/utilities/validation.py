"""One validation policy for every public argument of memcallbacks.

Rules, the same everywhere:

- an *integer* is a Python ``int`` or a numpy integer, never a ``bool`` (``True`` is not 1 here);
- a *real* is an integer or a Python/numpy float, never a ``bool``; NaN is rejected unless
  ``allow_nan=True``;
- a *bool* is ``True`` or ``False`` (or a numpy bool): strings such as ``"false"`` are refused,
  because ``bool("false")`` is ``True`` and one of these flags sends secrets to third parties;
- every message names the argument, the value received and what to pass instead.

Each checker returns the value converted to a plain Python type, so callers can write
``self.seed = check_int("seed", seed, minimum=0)``.

Example:
    >>> check_int("num_probe", 8, minimum=1)
    8
    >>> check_bool("log_secrets", "false")
    Traceback (most recent call last):
    ...
    TypeError: `log_secrets` must be True or False, got 'false' (str); pass a bool, not a string or number
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "as_numpy",
    "check_bool",
    "check_choice",
    "check_float_array",
    "check_int",
    "check_optional_bool",
    "check_path",
    "check_probability",
    "check_real",
    "check_seed",
    "is_int",
]


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """True for a Python or numpy integer that is not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    hint: str = "",
) -> int:
    """``value`` as an ``int``; a bool, float or string is refused, as is a value out of bounds."""
    if (
        not is_int(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        fix = f"; {hint}" if hint else ""
        raise (TypeError if not is_int(value) else ValueError)(
            f"`{name}` must be an integer{_bounds_text(minimum, maximum)}, got {_show(value)}{fix}"
        )
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """A random seed: an integer in ``[0, 2**63 - 1]`` (what numpy and torch accept)."""
    return check_int(name, value, minimum=0, maximum=2**63 - 1, hint="pass a non-negative integer such as 0")


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    allow_nan: bool = False,
    allow_inf: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a ``float``; bools and strings are refused, as are NaN/inf unless allowed."""
    ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )
    v = float(value) if ok else math.nan
    if ok:
        if math.isnan(v):
            ok = allow_nan
        elif math.isinf(v):
            ok = allow_inf
        else:
            if minimum is not None:
                ok = ok and (v >= minimum if min_inclusive else v > minimum)
            if maximum is not None:
                ok = ok and (v <= maximum if max_inclusive else v < maximum)
    if not ok:
        lo = "" if minimum is None else f"{'[' if min_inclusive else '('}{minimum}"
        hi = "" if maximum is None else f"{maximum}{']' if max_inclusive else ')'}"
        rng = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (minimum is not None or maximum is not None) else ""
        fix = f"; {hint}" if hint else ""
        is_number = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
            value, (bool, np.bool_)
        )
        raise (ValueError if is_number else TypeError)(
            f"`{name}` must be a {'finite ' if not allow_inf else ''}number{rng}, got {_show(value)}{fix}"
        )
    return v


def check_probability(name: str, value: Any, *, open_low: bool = False, open_high: bool = False) -> float:
    """A probability in ``[0, 1]`` (ends excluded with ``open_low`` / ``open_high``)."""
    return check_real(
        name, value, minimum=0.0, maximum=1.0, min_inclusive=not open_low, max_inclusive=not open_high
    )


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (a numpy bool too); anything else is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`{name}` must be True or False, got {_show(value)}; pass a bool, not a string or number"
        )
    return bool(value)


def check_optional_bool(name: str, value: Any) -> bool | None:
    """``None`` or a bool (see :func:`check_bool`)."""
    return None if value is None else check_bool(name, value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``; the message lists them."""
    options = tuple(choices)
    if not isinstance(value, (str, int, float, type(None))) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"`{name}` can be {listed}, got {_show(value)}")
    return value


def check_path(name: str, value: Any, *, optional: bool = True) -> Path | None:
    """A filesystem path (``str`` or ``os.PathLike``) as a :class:`~pathlib.Path`."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a path (str or os.PathLike), got {_show(value)}; pass a folder name"
        )
    return Path(value)


def as_numpy(value: Any, name: str) -> np.ndarray:
    """A torch tensor (any device; half precision widened), array, sequence or scalar as a numpy array."""
    torch = sys.modules.get("torch")  # only a tensor needs torch, and then torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex():
            raise TypeError(f"`{name}` must be real, got a tensor of dtype {tensor.dtype}")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.cpu().numpy()
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a tensor or array of numbers, got {type(value).__name__}")
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as e:  # ragged sequences
        raise TypeError(f"`{name}` must be a tensor or array of numbers, got {type(value).__name__}") from e


def check_float_array(
    value: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] = 1,
    allow_nan: bool = False,
    allow_inf: bool = False,
    allow_empty: bool = False,
    hint: str = "",
) -> NDArray[np.float64]:
    """``value`` (tensor, array, sequence) as a real float64 array of the given rank(s).

    A scalar is accepted where ``ndim`` includes 1 and becomes a 1-element array. Bools,
    complex numbers and strings are refused; NaN/inf unless allowed; the message names the
    first bad index.
    """
    array = as_numpy(value, name)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if array.ndim == 0 and 1 in dims and 0 not in dims:
        array = array.reshape(1)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"`{name}` must hold real numbers, got dtype {array.dtype}")
    if array.ndim not in dims:
        shapes = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"`{name}` must be {shapes}, got shape {tuple(array.shape)}{hint}")
    array = np.asarray(array, dtype=np.float64)
    if not allow_empty and array.size == 0:
        raise ValueError(f"`{name}` must be non-empty, got 0 values{hint}")
    bad = ~np.isfinite(array)
    if allow_nan:
        bad &= ~np.isnan(array)
    if allow_inf:
        bad &= ~np.isinf(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        where = index[0] if len(index) == 1 else index
        allowed = "finite" + (" or NaN" if allow_nan else "") + (" or +-inf" if allow_inf else "")
        raise ValueError(
            f"`{name}` must be {allowed}, got {array[index]} at index {where} "
            f"({int(bad.sum())} such value(s)); filter or replace them before calling"
        )
    return array
