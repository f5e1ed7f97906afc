"""Shadow runs through a real Trainer, the ShadowScoreRecorder files, and `memcallbacks attack`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.shadow_runs import make_pool, train_shadow_run, write_shadow_files
from memcallbacks.callbacks.shadow import (
    ShadowScoreRecorder,
    _auto_score,
    label_fingerprint,
    pool_fingerprint,
    shadow_split,
)
from memcallbacks.cli import main
from memcallbacks.metrics import logit_confidence
from memcallbacks.offline.attack import AttackInputError, run_attack
from memcallbacks.utilities import fileio

# -- the split and the fingerprint ---------------------------------------------------------------


def test_balanced_split_puts_every_sample_in_exactly_half_the_runs() -> None:
    masks = np.stack([shadow_split(101, run_index=i, num_runs=8, seed=3).inclusion for i in range(8)])
    assert (masks.sum(axis=0) == 4).all()
    assert len({m.tobytes() for m in masks}) == 8
    again = shadow_split(101, run_index=5, num_runs=8, seed=3)
    assert np.array_equal(again.inclusion, masks[5])
    assert np.array_equal(again.indices, np.flatnonzero(masks[5]))
    assert not np.array_equal(shadow_split(101, run_index=5, num_runs=8, seed=4).inclusion, masks[5])


def test_independent_split_draws_half_per_run() -> None:
    a = shadow_split(1000, run_index=0, seed=0)
    b = shadow_split(1000, run_index=1, seed=0)
    assert a.inclusion.sum() == b.inclusion.sum() == 500
    assert a.num_runs is None
    overlap = (a.inclusion & b.inclusion).sum()
    assert 200 < overlap < 300  # independent halves overlap on about a quarter


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="run_index"):
        shadow_split(10, run_index=8, num_runs=8)
    with pytest.raises(TypeError, match="run_index"):
        shadow_split(10, run_index=True)
    with pytest.raises(ValueError, match="keep_fraction"):
        shadow_split(10, run_index=0, keep_fraction=1.0)
    with pytest.raises(ValueError, match="rounds to"):
        shadow_split(10, run_index=0, num_runs=2, keep_fraction=0.1)


def test_pool_fingerprint_sees_size_order_and_values() -> None:
    pool = make_pool(50)
    same = make_pool(50)
    assert pool_fingerprint(pool) == pool_fingerprint(same)
    assert pool_fingerprint(pool) != pool_fingerprint(make_pool(50, seed=1))
    assert pool_fingerprint(pool) != pool_fingerprint(make_pool(51))
    reversed_pool = [pool[i] for i in reversed(range(50))]
    assert pool_fingerprint(pool) != pool_fingerprint(reversed_pool)


def test_label_fingerprint_sees_every_label_where_the_pool_fingerprint_samples_32() -> None:
    pool = make_pool(200)
    x, y = pool.tensors
    hashed = set(np.unique(np.linspace(0, 199, 32).round().astype(int)).tolist())
    i = next(k for k in range(200) if k not in hashed)
    y2 = y.clone()
    y2[i] = (y2[i] + 1) % 10
    relabelled = torch.utils.data.TensorDataset(x, y2)
    assert pool_fingerprint(relabelled) == pool_fingerprint(pool)  # one label off the 32 hashed items
    assert label_fingerprint(relabelled) != label_fingerprint(pool)
    assert label_fingerprint(torch.utils.data.TensorDataset(x + 1, y)) == label_fingerprint(pool)
    assert label_fingerprint([{"x": 0, "labels": 1}, {"x": 1, "labels": 0}]) != label_fingerprint(
        [{"x": 0, "labels": 0}, {"x": 1, "labels": 1}]
    )
    assert label_fingerprint([torch.zeros(2), torch.ones(2)]) is None  # no labels: nothing to compare


def test_attack_refuses_runs_trained_with_other_labels(tmp_path: Path) -> None:
    dirs = write_shadow_files(tmp_path)

    def stamp(run: Path, value: str | None) -> None:
        path = run / "memcallbacks" / "shadow" / "inclusion.npz"
        arrays = fileio.load_npz(path)
        arrays.pop("label_fingerprint", None)
        if value is not None:
            arrays["label_fingerprint"] = np.array(value)
        fileio.save_npz(path, **arrays)

    for run in dirs[:3]:
        stamp(run, "aaaaaaaaaaaaaaaa")
    stamp(dirs[3], None)  # recorded before label fingerprints: accepted
    assert run_attack(dirs, methods=("loss",)).settings["num_runs"] == 4
    stamp(dirs[3], "bbbbbbbbbbbbbbbb")
    with pytest.raises(AttackInputError, match="other labels") as info:
        run_attack(dirs, methods=("loss",))
    assert str(dirs[3]) in str(info.value)
    assert str(dirs[0]) in str(info.value)


def test_recorder_state_refuses_another_split() -> None:
    pool = make_pool(40)
    state = ShadowScoreRecorder(pool, run_index=1, num_runs=4).state_dict()
    other = ShadowScoreRecorder(pool, run_index=2, num_runs=4)
    with pytest.raises(ValueError, match="run_index"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="score_kind"):
        ShadowScoreRecorder(pool, run_index=0, score_kind="neg_loss")
    with pytest.raises(ValueError, match="score"):
        ShadowScoreRecorder(pool, run_index=0, score="loss")


def test_auto_score_logit_confidence_for_classifiers_and_minus_loss_for_sequences() -> None:
    net = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        score, correct, kind = _auto_score(net, (x, y))
    assert kind == "logit_confidence"
    logits = net(x).detach()
    np.testing.assert_allclose(score.numpy(), logit_confidence(logits, y), rtol=1e-5, atol=1e-5)
    assert torch.equal(correct, logits.argmax(-1) == y)

    emb = torch.nn.Embedding(5, 5)
    tokens = torch.randint(0, 5, (3, 7))
    with torch.no_grad():
        score, _, kind = _auto_score(emb, (tokens, tokens))
        expected = torch.nn.functional.cross_entropy(
            emb(tokens).transpose(1, 2), tokens, reduction="none"
        ).mean(1)
    assert kind == "neg_loss"
    torch.testing.assert_close(score, -expected)


# -- real shadow runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list, object]:
    root = tmp_path_factory.mktemp("shadow")
    pool = make_pool(240, dim=12)
    runs = [train_shadow_run(pool, root, i, num_runs=4, epochs=15) for i in range(4)]
    return [r[0] for r in runs], runs, pool


@pytest.mark.slow
def test_recorder_writes_the_split_and_every_pool_score(four_runs) -> None:
    dirs, runs, pool = four_runs
    run_dir, recorder, model = runs[1]
    folder = run_dir / "memcallbacks" / "shadow"
    inc = fileio.load_npz(folder / "inclusion.npz")
    rec = fileio.load_npz(folder / "scores.npz")
    assert np.array_equal(inc["inclusion"], shadow_split(240, run_index=1, num_runs=4, seed=0).inclusion)
    assert str(inc["fingerprint"]) == str(rec["fingerprint"]) == pool_fingerprint(pool)
    assert str(inc["label_fingerprint"]) == label_fingerprint(pool)
    assert int(inc["run_index"]) == 1
    assert int(inc["num_runs"]) == 4
    assert str(rec["score_kind"]) == "logit_confidence"
    assert rec["scores"].dtype == np.float32
    x, y = pool.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(rec["scores"], logit_confidence(logits, y), rtol=1e-4, atol=1e-4)
    assert np.array_equal(rec["correct"], (logits.argmax(-1) == y).numpy())
    assert int(rec["epochs_completed"]) == 15
    # the model memorised its half: members are more confident than non-members on average
    member = inc["inclusion"]
    assert rec["scores"][member].mean() > rec["scores"][~member].mean() + 1.0


@pytest.mark.slow
def test_cli_attack_prints_the_table_and_writes_json_and_png(four_runs, tmp_path: Path, capsys) -> None:
    dirs, _, _ = four_runs
    assert main(["attack", *map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    for label in ("loss", "lira-online", "rmia-online", "TPR@0.1%FPR", "TPR@1%FPR"):
        assert label in printed
    summary = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert set(summary["attacks"]) == {"loss", "lira-online", "rmia-online"}
    for entry in summary["attacks"].values():
        assert 0.5 < entry["auc"] <= 1.0
        assert len(entry["per_target_auc"]) == 4
        assert entry["n_members"] + entry["n_nonmembers"] + entry["n_excluded"] == 4 * 240
    assert summary["settings"]["fixed_variance"] is True
    assert summary["settings"]["num_runs"] == 4
    assert (tmp_path / "out" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    # the same numbers through the Python API, offline too
    result = run_attack(dirs, methods=("lira",), offline=True)
    assert set(result.reports) == {"lira-offline"}
    assert result.reports["lira-offline"].auc > 0.5
    assert (
        main(["attack", *map(str, dirs), "--method", "rmia", "--offline", "--out", str(tmp_path / "o2")]) == 0
    )
    argv = [
        "attack",
        *map(str, dirs),
        "--method",
        "lira",
        "--variance",
        "per-sample",
        "--out",
        str(tmp_path / "o3"),
    ]
    assert main(argv) == 0
    per_sample = json.loads((tmp_path / "o3" / "attack.json").read_text())
    assert per_sample["settings"]["fixed_variance"] is False
    # 4 balanced runs: every sample keeps 1 in- and 1 out-reference, too few for its own std, so the
    # per-sample variant falls back to the pooled std and gives the global variant's numbers
    assert per_sample["attacks"]["lira-online"]["auc"] == summary["attacks"]["lira-online"]["auc"]


@pytest.mark.slow
def test_attack_of_real_runs_lands_in_the_first_run_and_its_report_shows_the_table(four_runs, capsys) -> None:
    dirs, _, _ = four_runs
    assert main(["attack", *map(str, dirs)]) == 0  # default --out: <run0>/memcallbacks/attack
    folder = dirs[0] / "memcallbacks" / "attack"
    summary = json.loads((folder / "attack.json").read_text())
    assert main(["report", str(dirs[0])]) == 0
    md = (dirs[0] / "memcallbacks" / "report" / "summary.md").read_text()
    for label in ("loss", "lira-online", "rmia-online"):
        entry = summary["attacks"][label]
        assert (
            f"| {label} | {entry['auc']:.4f} | {entry['tpr@0.1%fpr']:.4f} | {entry['tpr@1%fpr']:.4f} |" in md
        )
    report_png = dirs[0] / "memcallbacks" / "report" / "attack_roc.png"
    assert report_png.read_bytes() == (folder / "roc.png").read_bytes()
    capsys.readouterr()


def _expect_exit_2(argv: list[str], capsys, *needles: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow
def test_cli_attack_bad_input_names_the_run_directory(four_runs, tmp_path: Path, capsys) -> None:
    dirs, _, _ = four_runs
    out = ["--out", str(tmp_path / "out")]
    _expect_exit_2(["attack", str(dirs[0]), *out], capsys, "at least 2 shadow runs")
    _expect_exit_2(["attack", str(dirs[0]), str(tmp_path), *out], capsys, str(tmp_path), "no inclusion mask")

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(dirs[3], target)
        return target / "memcallbacks" / "shadow"

    other_pool = copy("other_pool")
    inc = fileio.load_npz(other_pool / "inclusion.npz")
    inc["fingerprint"] = np.array("0123456789abcdef")
    fileio.save_npz(other_pool / "inclusion.npz", **inc)
    rec = fileio.load_npz(other_pool / "scores.npz")
    rec["fingerprint"] = np.array("0123456789abcdef")
    fileio.save_npz(other_pool / "scores.npz", **rec)
    _expect_exit_2(
        ["attack", *map(str, dirs[:2]), str(other_pool), *out], capsys, str(other_pool), "another pool"
    )

    nan_run = copy("nan_run")
    rec = fileio.load_npz(nan_run / "scores.npz")
    rec["scores"][7] = np.nan
    fileio.save_npz(nan_run / "scores.npz", **rec)
    _expect_exit_2(
        ["attack", *map(str, dirs[:2]), str(nan_run), *out], capsys, str(nan_run), "NaN", "sample 7"
    )

    no_mask = copy("no_mask")
    (no_mask / "inclusion.npz").unlink()
    _expect_exit_2(
        ["attack", *map(str, dirs[:2]), str(no_mask.parent.parent), *out], capsys, "no_mask", "inclusion"
    )

    _expect_exit_2(["attack", *map(str, dirs[:2]), str(dirs[1]), *out], capsys, "same samples")
    # two runs of a 4-run balanced split: each sample is in or out of the only reference, never both
    _expect_exit_2(["attack", *map(str, dirs[:2]), "--method", "lira", *out], capsys, "balanced split")


@pytest.mark.slow
def test_with_one_reference_rmia_beats_the_loss_attack_at_low_fpr(tmp_path: Path) -> None:
    """Zarifzadeh et al. (ICML 2024): RMIA with a single reference model beats the loss attack at low FPR.

    Two independent-half runs of an overfit MLP on a 2,000-sample pool (easy and hard samples, 20%
    flipped labels); each run is the target once with the other as its only reference: 2,000
    non-members pooled, so TPR at 1% FPR rests on 20 false positives. Measured here: loss 0.015,
    RMIA online 0.056, offline 0.13 (the AUCs are close, 0.69-0.70: the gain is at low FPR).
    """
    pool = make_pool(2000)
    dirs = [train_shadow_run(pool, tmp_path, i, num_runs=None, epochs=30)[0] for i in range(2)]
    result = run_attack(dirs, methods=("loss", "rmia"))
    offline = run_attack(dirs, methods=("rmia",), offline=True)
    loss = result.reports["loss"].tpr_at_fpr[0.01]
    online = result.reports["rmia-online"].tpr_at_fpr[0.01]
    off = offline.reports["rmia-offline"].tpr_at_fpr[0.01]
    print(f"TPR@1%FPR loss {loss:.4f}, RMIA online {online:.4f}, offline {off:.4f}")
    assert online > 2 * loss
    assert online - loss > 0.015
    assert off > 2 * loss
    assert off - loss > 0.015


@pytest.mark.slow
def test_recorder_warns_when_the_run_trains_on_other_data_and_resume_checks_the_split(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from memcallbacks.demos.toy import MLPClassifier

    pool = make_pool(64, dim=6)

    def mlp() -> MLPClassifier:
        return MLPClassifier(6, 10, lr=3e-3)

    def trainer(recorder: ShadowScoreRecorder, epochs: int) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs,
            default_root_dir=tmp_path,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder],
        )

    recorder = ShadowScoreRecorder(pool, run_index=0, num_runs=4)
    with pytest.warns(UserWarning, match="recorder.train_dataset"):
        trainer(recorder, 1).fit(mlp(), DataLoader(pool, batch_size=16))  # the whole pool: wrong
    ckpt = next(tmp_path.rglob("*.ckpt"))
    other = ShadowScoreRecorder(pool, run_index=1, num_runs=4)
    with pytest.raises(ValueError, match="run_index"):
        trainer(other, 2).fit(mlp(), DataLoader(other.train_dataset, batch_size=16), ckpt_path=ckpt)
    same = ShadowScoreRecorder(pool, run_index=0, num_runs=4)
    trainer(same, 2).fit(mlp(), DataLoader(same.train_dataset, batch_size=16), ckpt_path=ckpt)
    assert same.scores is not None
    assert same.scores.shape == (64,)


class _TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(x))  # type: ignore[no-any-return]


@pytest.mark.slow
def test_language_model_runs_record_minus_the_loss_and_rmia_reads_them(tmp_path: Path) -> None:
    import pytorch_lightning as pl
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class LM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _TinyLM()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            return F.cross_entropy(self(x).transpose(1, 2), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 11, (48, 9), generator=g)
    pool = TensorDataset(tokens[:, :-1], tokens[:, 1:])  # (x, y) with targets already aligned
    dirs = []
    for i in range(4):
        recorder = ShadowScoreRecorder(pool, run_index=i, num_runs=4)
        model = LM()
        pl.Trainer(
            max_epochs=3,
            default_root_dir=tmp_path / f"lm{i}",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[recorder],
        ).fit(model, DataLoader(recorder.train_dataset, batch_size=8, shuffle=True))
        dirs.append(tmp_path / f"lm{i}")
        rec = fileio.load_npz(tmp_path / f"lm{i}" / "memcallbacks" / "shadow" / "scores.npz")
        assert str(rec["score_kind"]) == "neg_loss"
        with torch.no_grad():
            expected = F.cross_entropy(
                model(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none"
            ).mean(1)
        np.testing.assert_allclose(rec["scores"], -expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.warns(
        UserWarning, match="attack_report: only"
    ):  # a pool of 48 is far too small for TPR at 0.1% FPR
        result = run_attack(dirs, methods=("rmia", "lira"))
    assert set(result.reports) == {"rmia-online", "lira-online"}
    assert result.settings["score_kind"] == "neg_loss"
