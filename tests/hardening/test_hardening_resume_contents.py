"""A checkpoint fingerprints the probe contents: a resume given other data of the same size raises."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from helpers.data import loaders, make_blobs
from helpers.models import TinyClassifier
from helpers.training import trainer
from memcallbacks import MembershipInferenceMonitor
from memcallbacks.callbacks.probes import ProbeResolver, probe_digest


def _data(seed: int, n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _round_trip(state: dict[str, object]) -> dict[str, object]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # type: ignore[no-any-return]


def _resolver(members: object, nonmembers: object) -> ProbeResolver:
    return ProbeResolver("MyMonitor", members=members, nonmembers=nonmembers, num_probes=10, seed=0)


def test_resume_with_same_contents_is_accepted_and_other_contents_raise() -> None:
    first = _resolver(_data(0), _data(1))
    first.resolve(None)
    state = _round_trip(first.state_dict())
    same = _resolver(_data(0), _data(1))
    same.load_state_dict(state)
    same.resolve(None)  # same data: no error
    other = _resolver(_data(0), _data(2))  # non-members: same size, other contents
    other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"MyMonitor: the `nonmembers` probe data differ.*same data"):
        other.resolve(None)
    swapped = _resolver(_data(5), _data(1))
    swapped.load_state_dict(state)
    with pytest.raises(ValueError, match="`members` probe data differ"):
        swapped.resolve(None)


def test_a_checkpoint_without_digests_still_loads() -> None:
    first = _resolver(_data(0), _data(1))
    first.resolve(None)
    state = {k: v for k, v in first.state_dict().items() if k != "probe_digests"}
    other = _resolver(_data(3), _data(4))
    other.load_state_dict(state)
    other.resolve(None)  # nothing to compare against
    assert set(other.digests) == {"members", "nonmembers"}


def test_digest_reads_a_sample_of_large_sets_and_keeps_the_random_state() -> None:
    big = _data(0, n=2000)
    idx = np.arange(2000)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    d = probe_digest(big, idx)
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
    assert d == probe_digest(big, idx)
    assert len(d) == 32
    assert d != probe_digest(big, idx[:1999])  # the length is hashed


def test_random_transforms_on_the_global_generators_give_a_stable_digest() -> None:
    class Noisy(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(3) + i

    class OwnRandom(Noisy):
        rng = np.random.default_rng()

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor(self.rng.random(3))

    assert probe_digest(Noisy(), np.arange(5)) == probe_digest(Noisy(), np.arange(5))
    r = _resolver(OwnRandom(), Noisy())
    r.resolve(None)
    assert r.digests["members"] == ""  # not reproducible: kept unchecked rather than failing every resume
    assert r.digests["nonmembers"] != ""


def _fit(tmp: Path, val_seed: int, max_epochs: int, ckpt_path: str | None = None) -> None:
    torch.manual_seed(0)
    tl, vl = loaders(make_blobs(48, seed=0), make_blobs(30, seed=val_seed), shuffle=False)
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    monitor = MembershipInferenceMonitor(num_probes=24, seed=7)
    t = trainer(tmp, max_epochs=max_epochs, callbacks=[monitor, ckpt], enable_checkpointing=True)
    t.fit(TinyClassifier(hidden=8), tl, vl, ckpt_path=ckpt_path)


@pytest.mark.slow
def test_membership_resume_with_other_validation_data_of_the_same_size_raises(tmp_path: Path) -> None:
    _fit(tmp_path, 1, 1)
    ckpt = str(tmp_path / "ckpt" / "epoch=0.ckpt")
    with pytest.raises(ValueError, match=r"MembershipInferenceMonitor: the `nonmembers` probe data differ"):
        _fit(tmp_path, 2, 2, ckpt_path=ckpt)
    _fit(tmp_path, 1, 2, ckpt_path=ckpt)  # the same data resumes


def test_zlib_width_is_fixed_per_call_not_per_sequence() -> None:
    from memcallbacks.metrics.sequence import zlib_length, zlib_ratio

    low = np.tile(np.arange(0, 250, 7), 3)
    high = low.copy()
    high[5] = 256  # one id crosses 255 -> 256
    assert zlib_length(low, max_id=256) == zlib_length(np.tile(np.arange(0, 250, 7), 3), max_id=300)
    # with a fixed width, one changed id changes the length by a few bytes, not the whole encoding
    fixed = abs(zlib_length(high, max_id=256) - zlib_length(low, max_id=256))
    assert fixed <= 8 < zlib_length(high) - zlib_length(low)  # per-sequence width: the whole encoding changes
    # zlib_ratio uses one width for the call: the first sequence's ratio ignores the second's range
    other = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3])
    r1 = zlib_ratio([1.0, 1.0], [other, low])
    r2 = zlib_ratio([1.0, 1.0], [other, high])
    assert r1[0] != r2[0]  # widths follow the call's largest id ...
    assert zlib_ratio([1.0], [other], max_id=256)[0] == r2[0]  # ... or max_id, identically
    with pytest.raises(ValueError, match="`max_id`=255 but a token id is 256"):
        zlib_length(high, max_id=255)
    assert zlib_length("abc", max_id=5) == zlib_length("abc")  # text: unchanged


def test_exposure_file_names_the_method_auto_resolved_to() -> None:
    from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer

    tok = CharTokenizer()
    monitor = CanaryExposureMonitor(
        CanarySet("my pin is {secret}.", tok, length=3, repetitions=(1,), per_count=1)
    )
    assert monitor.method == "auto"
    monitor.resolved_method = "extrapolated"  # what auto fell back to
    arrays = monitor._arrays()
    assert str(arrays["method"]) == "extrapolated"
    assert str(arrays["strategy"]) == "extrapolated"
    monitor.resolved_method = "exact_trie"
    assert str(monitor._arrays()["method"]) == "exact"  # the file's earlier vocabulary


def test_token_accuracy_signal_says_the_recorder_does_not_record_it(tmp_path: Path) -> None:
    from memcallbacks.offline import counterfactual
    from memcallbacks.offline.shadow_runs import ShadowRun

    run = ShadowRun(
        path=tmp_path,
        inclusion=np.ones(3, bool),
        scores=np.zeros(3),
        score_kind="neg_loss",
        fingerprint="f",
        run_index=0,
    )
    with pytest.raises(
        counterfactual.MemorisationInputError, match="`ShadowScoreRecorder` does not record it"
    ):
        counterfactual._performance(run, {}, "token_accuracy")
