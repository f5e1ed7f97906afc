"""memcallbacks.utilities.validation: the one validation policy, checker by checker.

Integers are Python or numpy integers and never bools; reals refuse bools, strings and (unless
allowed) NaN/inf; bools are bools, never the strings "true"/"false"; every message names the
argument, shows the value received (with its type) and says what to pass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from memcallbacks.utilities.validation import (
    as_numpy,
    check_bool,
    check_choice,
    check_float_array,
    check_int,
    check_optional_bool,
    check_path,
    check_probability,
    check_real,
    check_seed,
    is_int,
)


# -- integers -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 7, -3, np.int64(7), np.int32(-3), np.uint8(7)])
def test_is_int_accepts_python_and_numpy_integers(value: object) -> None:
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 1.0, np.float64(2.0), "3", None, [1]])
def test_is_int_refuses_bools_floats_and_the_rest(value: object) -> None:
    assert not is_int(value)


@pytest.mark.parametrize("value", [5, np.int64(5), np.int16(5)])
def test_check_int_returns_a_plain_int(value: object) -> None:
    out = check_int("num_probe", value, minimum=1)
    assert out == 5
    assert type(out) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(False), 2.0, "2", None])
def test_check_int_refuses_non_integers_with_a_type_error(value: object) -> None:
    with pytest.raises(
        TypeError, match=r"^`num_probe` must be an integer >= 1, got .*; pass a count"
    ) as info:
        check_int("num_probe", value, minimum=1, hint="pass a count")
    assert type(value).__name__ in str(info.value)  # the message shows the type received


def test_check_int_bounds_are_inclusive_and_named() -> None:
    assert check_int("k", 1, minimum=1, maximum=3) == 1
    assert check_int("k", 3, minimum=1, maximum=3) == 3
    assert check_int("k", -10, maximum=0) == -10
    with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, 3\], got 0 \(int\)"):
        check_int("k", 0, minimum=1, maximum=3)
    with pytest.raises(
        ValueError, match=r"`k` must be an integer in \[1, 3\], got (np\.int64\()?4\)? \(int64\)"
    ):
        check_int("k", np.int64(4), minimum=1, maximum=3)
    with pytest.raises(ValueError, match=r"`k` must be an integer <= 0, got 1 \(int\)"):
        check_int("k", 1, maximum=0)


def test_check_seed_accepts_numpy_integers_and_refuses_negatives_bools_and_overflow() -> None:
    assert check_seed("seed", np.int64(3)) == 3
    assert check_seed("seed", 2**63 - 1) == 2**63 - 1
    for bad, error in ((-1, ValueError), (2**63, ValueError), (True, TypeError), (1.0, TypeError)):
        with pytest.raises(
            error, match=r"`seed` must be an integer in \[0, .*pass a non-negative integer such as 0"
        ):
            check_seed("seed", bad)


# -- reals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.float64(1.0), np.int64(1)])
def test_check_real_returns_a_plain_float(value: object) -> None:
    out = check_real("threshold", value, minimum=0.0, maximum=1.0)
    assert out == float(value)
    assert type(out) is float


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, [0.5], 1 + 0j])
def test_check_real_refuses_non_numbers_with_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=r"^`threshold` must be a finite number, got .*\("):
        check_real("threshold", value)


def test_check_real_nan_and_inf_only_when_allowed() -> None:
    with pytest.raises(ValueError, match=r"`x` must be a finite number, got nan \(float\)"):
        check_real("x", math.nan)
    with pytest.raises(
        ValueError, match=r"`x` must be a finite number, got (np\.float64\()?inf\)? \(float64\)"
    ):
        check_real("x", np.float64("inf"))
    assert math.isnan(check_real("x", math.nan, allow_nan=True))
    assert check_real("x", -math.inf, allow_inf=True) == -math.inf
    with pytest.raises(ValueError, match=r"`x` must be a number, got nan"):  # inf allowed, NaN still not
        check_real("x", math.nan, allow_inf=True)


def test_check_real_open_and_closed_bounds_and_the_hint() -> None:
    assert check_real("lr", 0.0, minimum=0.0) == 0.0
    with pytest.raises(
        ValueError, match=r"`lr` must be a finite number in \(0.0, inf\), got 0.0 \(float\); pass lr > 0"
    ):
        check_real("lr", 0.0, minimum=0.0, min_inclusive=False, hint="pass lr > 0")
    with pytest.raises(ValueError, match=r"`lr` must be a finite number in \(-inf, 1.0\), got 1.0"):
        check_real("lr", 1.0, maximum=1.0, max_inclusive=False)
    with pytest.raises(ValueError, match=r"in \[0.0, 1.0\], got 1.5"):
        check_real("lr", 1.5, minimum=0.0, maximum=1.0)


def test_check_probability_ends() -> None:
    assert check_probability("p", 0) == 0.0
    assert check_probability("p", 1) == 1.0
    assert check_probability("p", np.float32(0.5)) == 0.5
    with pytest.raises(ValueError, match=r"`p` must be a finite number in \(0.0, 1.0\], got 0"):
        check_probability("p", 0, open_low=True)
    with pytest.raises(ValueError, match=r"`p` must be a finite number in \[0.0, 1.0\), got 1"):
        check_probability("p", 1, open_high=True)
    with pytest.raises(TypeError, match="`p` must be a finite number"):
        check_probability("p", True)


# -- bools ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (np.bool_(True), True)])
def test_check_bool_accepts_bools(value: object, expected: bool) -> None:
    out = check_bool("log_secrets", value)
    assert out is expected


@pytest.mark.parametrize("value", ["false", "true", "False", "", 0, 1, None, np.int64(1)])
def test_check_bool_refuses_strings_and_numbers(value: object) -> None:
    with pytest.raises(
        TypeError, match=r"^`log_secrets` must be True or False, got .*; pass a bool, not a string"
    ):
        check_bool("log_secrets", value)


def test_check_bool_message_shows_the_value_and_its_type() -> None:
    with pytest.raises(TypeError, match=r"got 'false' \(str\)"):
        check_bool("log_per_sample", "false")


def test_check_optional_bool() -> None:
    assert check_optional_bool("flag", None) is None
    assert check_optional_bool("flag", False) is False
    with pytest.raises(TypeError, match="`flag` must be True or False, got 'no'"):
        check_optional_bool("flag", "no")


# -- choices and paths ----------------------------------------------------------------------
def test_check_choice_returns_the_value_and_lists_the_options() -> None:
    assert check_choice("mode", "max", ("min", "max")) == "max"
    assert check_choice("k", None, (None, 1)) is None
    with pytest.raises(ValueError, match=r"^`mode` can be 'min', 'max', got 'mean' \(str\)$"):
        check_choice("mode", "mean", ("min", "max"))
    with pytest.raises(ValueError, match=r"`mode` can be 'min', 'max', got \['min'\] \(list\)"):
        check_choice("mode", ["min"], ["min", "max"])  # unhashable: refused, not a TypeError from `in`


def test_check_path_accepts_str_and_pathlike(tmp_path: Path) -> None:
    assert check_path("run_dir", str(tmp_path)) == tmp_path
    assert check_path("run_dir", tmp_path) == tmp_path

    class Custom(os.PathLike[str]):
        def __fspath__(self) -> str:
            return str(tmp_path / "x")

    assert check_path("run_dir", Custom()) == tmp_path / "x"
    assert check_path("run_dir", None) is None


@pytest.mark.parametrize("value", [3, b"bytes", ["a"], True])
def test_check_path_refuses_other_types(value: object) -> None:
    with pytest.raises(
        TypeError, match=r"^`run_dir` must be a path \(str or os.PathLike\), got .*; pass a folder name"
    ):
        check_path("run_dir", value)


def test_check_path_none_when_required() -> None:
    with pytest.raises(TypeError, match=r"`out` must be a path .*got None \(NoneType\)"):
        check_path("out", None, optional=False)


# -- arrays ---------------------------------------------------------------------------------
def test_as_numpy_converts_tensors_arrays_sequences_and_scalars() -> None:
    half = as_numpy(torch.tensor([0.5, 1.5], dtype=torch.float16), "losses")
    assert half.dtype == np.float32  # half precision widened
    np.testing.assert_array_equal(half, [0.5, 1.5])
    assert as_numpy(torch.tensor([1.0], dtype=torch.bfloat16), "losses").dtype == np.float32
    np.testing.assert_array_equal(as_numpy([1, 2], "x"), [1, 2])
    assert as_numpy(3.0, "x").shape == ()
    grad = torch.ones(2, requires_grad=True) * 2
    np.testing.assert_array_equal(as_numpy(grad, "x"), [2.0, 2.0])  # detached


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "`scores` must be a tensor or array of numbers, got str"),
        (b"abc", "`scores` must be a tensor or array of numbers, got bytes"),
        ([[1.0], [1.0, 2.0]], "`scores` must be a tensor or array of numbers, got list"),
        (torch.tensor([1 + 1j]), "`scores` must be real, got a tensor of dtype torch.complex64"),
    ],
)
def test_as_numpy_refusals_name_the_argument(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("[", r"\[")):
        as_numpy(value, "scores")


def test_check_float_array_converts_and_reshapes_a_scalar() -> None:
    out = check_float_array(np.array([1, 2], dtype=np.int32), "losses")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [1.0, 2.0])
    np.testing.assert_array_equal(check_float_array(2.5, "losses"), [2.5])
    assert check_float_array(np.zeros((2, 3)), "m", ndim=(1, 2)).shape == (2, 3)
    assert check_float_array([], "losses", allow_empty=True).size == 0


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.array([True, False]), TypeError, "`losses` must hold real numbers, got dtype bool"),
        (np.array([1 + 0j]), TypeError, "`losses` must hold real numbers, got dtype complex128"),
        (np.array(["a"]), TypeError, "`losses` must hold real numbers, got dtype <U1"),
        (np.zeros((2, 2)), ValueError, r"`losses` must be 1-D, got shape \(2, 2\); pass a vector"),
        ([], ValueError, "`losses` must be non-empty, got 0 values; pass a vector"),
    ],
)
def test_check_float_array_refusals(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_float_array(value, "losses", hint="; pass a vector")


def test_check_float_array_names_the_first_non_finite_index() -> None:
    with pytest.raises(
        ValueError,
        match=r"`losses` must be finite, got nan at index 2 \(2 such value\(s\)\); filter or replace them",
    ):
        check_float_array([0.0, 1.0, math.nan, math.inf], "losses")
    with pytest.raises(ValueError, match=r"must be finite or NaN, got inf at index \(1, 0\)"):
        check_float_array([[0.0, math.nan], [math.inf, 1.0]], "m", ndim=2, allow_nan=True)
    with pytest.raises(ValueError, match=r"must be finite or \+-inf, got nan at index 0"):
        check_float_array([math.nan, math.inf], "losses", allow_inf=True)
    both = check_float_array([math.nan, -math.inf], "losses", allow_nan=True, allow_inf=True)
    assert np.isnan(both[0])
    assert both[1] == -math.inf
