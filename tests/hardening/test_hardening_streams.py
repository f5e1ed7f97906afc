"""Bad input around streamed data: each refusal names the argument, the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from memcallbacks import LossTrajectoryTracker
from memcallbacks.data.streams import IndexedStream, interleave, text_id


def test_id_space_is_checked_in_the_constructor() -> None:
    with pytest.raises(ValueError, match="id_space"):
        LossTrajectoryTracker(id_space="sparse")
    with pytest.raises(ValueError, match="`id_space='hashed'` needs `num_samples=`"):
        LossTrajectoryTracker(id_space="hashed")
    with pytest.raises(ValueError, match="needs source='step', got source='probe'"):
        LossTrajectoryTracker(source="probe", id_space="hashed", num_samples=10)
    with pytest.raises(ValueError, match="`reference=` is indexed by dataset position"):
        LossTrajectoryTracker(id_space="hashed", num_samples=3, reference=np.zeros(3))


def test_stream_helpers_refuse_bad_arguments() -> None:
    with pytest.raises(TypeError, match="`iterable` must be iterable"):
        IndexedStream(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`id_fn` must be a callable"):
        IndexedStream([1], id_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="shard"):
        IndexedStream([1], shard="yes")  # type: ignore[arg-type]
    for bad in (-1, 2**63, 1.5, True, "7"):
        with pytest.raises(ValueError, match=r"`id_fn` must return an int in \[0, 2\*\*63\)"):
            list(IndexedStream(["a"], id_fn=lambda item, bad=bad: bad))
    with pytest.raises(ValueError, match="within"):
        interleave([1, 2], ["x"], within=0)
    with pytest.raises(TypeError, match="`stream` must be iterable"):
        interleave(5, ["x"], within=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`text` must be str or bytes"):
        text_id(None)  # type: ignore[arg-type]
