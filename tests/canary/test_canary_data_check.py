"""Canaries the model never saw, or saw through another tokenizer, are loud (issue 26, item 2).

Pure checks of :func:`memcallbacks.data.canary_check.locate_canaries` against hand-built datasets,
then real Trainer runs: forgetting ``inject`` warns (once, recorded in ``exposure.npz``), a model
trained on another character vocabulary is refused before the first step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers.language_models import tiny_window_lm
from helpers.training import trainer as make_trainer
from memcallbacks import CanaryExposureMonitor, CanarySet, CharTokenizer, IndexedDataset
from memcallbacks.data.canary_check import item_views, locate_canaries
from memcallbacks.demos.toy import TokenDataset, collate_tokens, lm_loader, make_payment_corpus
from memcallbacks.utilities.fileio import load_npz

TOK = CharTokenizer()
FMT = "my pin is {secret}."


def canaries(**kw) -> CanarySet:
    opts = dict(length=3, repetitions=(1, 4), per_count=2, seed=0)
    opts.update(kw)
    return CanarySet(FMT, TOK, **opts)


def other_vocabulary() -> CharTokenizer:
    """A character vocabulary of its own (the corpus' characters, sorted): other ids for the digits."""
    return CharTokenizer("".join(sorted(set("".join(make_payment_corpus(200, seed=1)) + FMT + "0123456789"))))


# ------------------------------------------------------------------------------------ pure checks
def test_rows_at_the_recorded_positions_are_compared_by_token_ids() -> None:
    cs = canaries()
    texts = cs.inject(make_payment_corpus(20, seed=1))
    rows = [TOK.encode(t) for t in texts]
    found = locate_canaries(cs, rows, injected=cs.injected_indices)
    assert (found.status, found.compared) == ("ok", "token_ids")
    assert found.scanned == sum(c.repetitions for c in cs)  # only the recorded items are read
    other = other_vocabulary()
    found = locate_canaries(cs, [other.encode(t) for t in texts], injected=cs.injected_indices)
    assert found.status == "mismatch"
    assert len(found.mismatched) == found.scanned  # every copy of every canary


def test_a_scan_finds_injected_canaries_without_positions_and_says_when_it_stopped() -> None:
    cs = canaries()
    corpus = make_payment_corpus(50, seed=1)
    texts = list(cs.inject(corpus))
    assert locate_canaries(cs, texts).status == "ok"  # text items: found by text
    found = locate_canaries(cs, corpus)  # never injected: every item read
    assert (found.status, found.complete, found.scanned) == ("missing", True, 50)
    assert set(found.missing) == set(cs.ids)
    found = locate_canaries(cs, corpus, max_scan=10)
    assert (found.status, found.complete, found.scanned) == ("missing", False, 10)


def test_ids_match_only_at_whole_id_positions() -> None:
    cs = CanarySet("a{secret}", CharTokenizer("a0123456789"), length=1, repetitions=(1,), per_count=1, seed=0)
    pattern = cs.plain_token_ids(cs[0])
    # the pattern's int64 bytes appear inside this row only across two ids (little-endian shifted)
    shifted = np.frombuffer(
        b"\x00" * 4 + np.asarray(pattern, dtype="<i8").tobytes() + b"\x00" * 4, dtype="<i8"
    )
    assert locate_canaries(cs, [shifted.tolist()]).status == "missing"
    assert locate_canaries(cs, [[9, *pattern, 9]]).status == "ok"


def test_items_of_every_usual_shape_are_read() -> None:
    ids = torch.tensor([1, 2, 3])
    assert len(item_views(ids)[1]) == 1
    assert len(item_views({"input_ids": [1, 2], "attention_mask": [1, 1]})[1]) == 2
    assert len(item_views((ids[:-1], ids[1:]))[1]) == 2  # an (x, y) pair of shifted ids
    assert len(item_views(torch.ones(2, 3, dtype=torch.long))[1]) == 2  # a collated batch
    assert item_views(torch.randn(3)) == ([], [])  # features: nothing to compare
    cs = canaries()
    assert locate_canaries(cs, [torch.randn(4)] * 40).status == "unchecked"


# ------------------------------------------------------------------------------------ in a Trainer
def fit(tmp_path, cs: CanarySet, loader: DataLoader, **kw) -> CanaryExposureMonitor:
    monitor = CanaryExposureMonitor(cs, method="exact", **kw)
    make_trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(tiny_window_lm(TOK.vocab_size), loader)
    return monitor


def test_an_injected_training_set_passes_silently(tmp_path) -> None:
    cs = canaries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = fit(tmp_path, cs, lm_loader(cs.inject(make_payment_corpus(40, seed=1)), TOK, batch_size=32))
    assert not [w for w in caught if "training data" in str(w.message)]
    assert monitor.data_check is not None
    assert monitor.data_check.status == "ok"
    assert str(load_npz(monitor.run_dir / "exposure.npz")["data_check"]) == "ok"


def test_forgetting_inject_warns_once_and_is_recorded(tmp_path) -> None:
    cs = canaries()
    loader = lm_loader(make_payment_corpus(40, seed=1), TOK, batch_size=32)  # no canaries.inject(...)
    with pytest.warns(
        UserWarning, match=r"4 of 4 canaries .* were not found in any of the 40 training items"
    ):
        monitor = fit(tmp_path, cs, loader)
    assert monitor.warned("canaries_not_in_training_data") == 1
    assert str(load_npz(monitor.run_dir / "exposure.npz")["data_check"]) == "missing"


def test_a_model_trained_on_another_vocabulary_is_refused_before_the_first_step(tmp_path) -> None:
    cs = canaries()  # the README's inline CharTokenizer()
    texts = cs.inject(make_payment_corpus(40, seed=1))
    loader = lm_loader(texts, other_vocabulary(), batch_size=32)  # the model's own character vocabulary
    model = tiny_window_lm(TOK.vocab_size)
    monitor = CanaryExposureMonitor(cs, method="exact")
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    with pytest.raises(
        ValueError, match=r"another tokenizer than the CanarySet's.*check_training_data=False"
    ):
        trainer.fit(model, loader)
    assert trainer.global_step == 0


def test_text_items_are_compared_through_the_tokenising_collate(tmp_path) -> None:
    cs = canaries()
    other = other_vocabulary()
    texts = cs.inject(make_payment_corpus(40, seed=1))

    def tokenise(batch):  # text items, tokenised (by another vocabulary) in the collate function
        index = torch.tensor([i for i, _ in batch])
        return [index, collate_tokens([torch.tensor(other.encode(t)) for _, t in batch])]

    loader = DataLoader(IndexedDataset(texts), batch_size=32, collate_fn=tokenise)
    with pytest.raises(ValueError, match="another tokenizer"):
        fit(tmp_path, cs, loader)


def test_the_check_can_be_switched_off(tmp_path) -> None:
    cs = canaries()
    loader = lm_loader(make_payment_corpus(40, seed=1), TOK, batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = fit(tmp_path, cs, loader, check_training_data=False)
    assert not [w for w in caught if "training data" in str(w.message)]
    assert str(load_npz(monitor.run_dir / "exposure.npz")["data_check"]) == "off"


def test_token_dataset_rows_hold_the_canary_ids() -> None:
    cs = canaries()
    ds = TokenDataset(cs.inject(["x"]), TOK)
    assert locate_canaries(cs, ds, injected=cs.injected_indices).status == "ok"


def test_a_dataset_without_items_by_index_is_unchecked_not_a_crash() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

        def __len__(self) -> int:
            return 5

    found = locate_canaries(canaries(), Stream())
    assert found.status == "unchecked"
    assert "reading item 4 failed" in found.notes[0]
