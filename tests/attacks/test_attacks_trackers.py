"""`memcallbacks attack --log ...` and `log_attack_results`: real W&B (offline), TensorBoard, MLflow
(sqlite) and CSV runs read back from disk; a failing tracker keeps attack.json; bad flags exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from helpers.shadow_runs import write_shadow_files
from helpers.wandb_reader import history_rows, wait_for_run_file
from memcallbacks.cli import main
from memcallbacks.offline.attack import log_attack_results, run_attack

LABELS = ("loss", "lira-online", "rmia-online")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_shadow_files(tmp_path_factory.mktemp("handmade"))


def _expected_keys(summary: dict) -> set[str]:
    keys = set()
    for label in summary["attacks"]:
        for name in (
            "auc",
            "advantage",
            "tpr@0.1%fpr",
            "tpr@1%fpr",
            "n_members",
            "n_nonmembers",
            "n_excluded",
        ):
            keys.add(f"attack/{label}/{name}")
    return keys


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    try:
        code = main(["attack", *map(str, argv)])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_python_api_logs_aggregates_to_csv_and_tensorboard(dirs: list[Path], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_attack(dirs)
    summary = result.to_json()
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    tb = TensorBoardLogger(str(tmp_path), name="tb", default_hp_metric=False)
    assert log_attack_results(result, [csv_logger, tb]) == 0
    for logger in (csv_logger, tb):
        logger.finalize("success")

    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = rows[0]
    # exactly the aggregate keys (and Lightning's step): no per-sample score, no sample id
    assert set(row) == _expected_keys(summary) | {"step"}
    for label in LABELS:
        entry = summary["attacks"][label]
        assert float(row[f"attack/{label}/auc"]) == entry["auc"]
        assert float(row[f"attack/{label}/tpr@1%fpr"]) == entry["tpr@1%fpr"]
        assert float(row[f"attack/{label}/tpr@0.1%fpr"]) == entry["tpr@0.1%fpr"]

    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == _expected_keys(summary)
    for label in LABELS:
        (event,) = acc.Scalars(f"attack/{label}/auc")
        assert event.value == pytest.approx(summary["attacks"][label]["auc"], rel=1e-6)  # float32
    assert {"attack/roc", *(f"attack/{label}/roc" for label in LABELS)} <= set(tags["images"])
    png = acc.Images("attack/roc")[0].encoded_image_string
    assert png[:4] == b"\x89PNG"
    # the summary table as Markdown text, with the JSON's numbers
    (text_event,) = acc.Tensors("attack/summary/text_summary")
    text = text_event.tensor_proto.string_val[0].decode()
    assert "lira-online" in text
    assert str(summary["attacks"]["lira-online"]["auc"]) in text


@pytest.mark.slow  # starts a real tracker run
def test_cli_logs_to_an_offline_wandb_run(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    code, printed, err = _cli(capsys, *dirs, "--out", out, "--log", "wandb", "--run-name", "lira-audit")
    assert code == 0, err
    assert "W&B run" in printed
    summary = json.loads((out / "attack.json").read_text())
    rows = history_rows(wait_for_run_file(out / "wandb"))
    logged = [r for r in rows if "attack/loss/auc" in r]
    assert len(logged) == 1  # one row: scalars, table, curves and figure together
    row = logged[0]
    for label in LABELS:
        for key in ("auc", "tpr@0.1%fpr", "tpr@1%fpr"):
            assert row[f"attack/{label}/{key}"] == summary["attacks"][label][key]
    assert row["attack/roc/_type"] == "image-file"
    assert row["attack/summary/_type"] == "table-file"
    assert row["attack/summary/nrows"] == 3
    assert not any("score" in k or "per_sample" in k for k in row)


@pytest.mark.slow  # starts a real tracker run
def test_cli_logs_to_mlflow_sqlite(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # the command honours $MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri (called by any earlier
    # MLFlowLogger in this worker) leaves set: without it the store is <out>/mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    out = tmp_path / "out"
    code, _, err = _cli(capsys, *dirs, "--out", out, "--log", "mlflow", "--project", "audit")
    assert code == 0, err
    summary = json.loads((out / "attack.json").read_text())
    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("audit").experiment_id])
    metrics = run.data.metrics
    for label in LABELS:
        assert metrics[f"attack/{label}/auc"] == summary["attacks"][label]["auc"]
        # MLflow allows no '@' or '%' in keys: Lightning drops them
        assert metrics[f"attack/{label}/tpr1fpr"] == summary["attacks"][label]["tpr@1%fpr"]
    assert run.data.params["attack/num_runs"] == "4"
    listed = [a.path for a in client.list_artifacts(run.info.run_id, "memcallbacks/attack/roc")]
    assert listed == ["memcallbacks/attack/roc/epoch_0000.png"]


def test_a_failing_tracker_keeps_the_json_and_exits_1(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the CSV logger wants its folder")
    out = tmp_path / "out"
    code, printed, err = _cli(capsys, *dirs, "--out", out, "--log", "csv", "--log-dir", blocker)
    assert code == 1
    assert "CSVLogger failed" in err
    assert "tracker call(s) failed" in err
    assert str(out / "attack.json") in err
    assert "Traceback" not in err
    summary = json.loads((out / "attack.json").read_text())  # written before the trackers ran
    assert set(summary["attacks"]) == set(LABELS)
    assert "lira-online" in printed
    assert (out / "roc.png").is_file()


def test_an_unknown_tracker_exits_2_naming_the_choices(
    dirs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, *dirs, "--out", tmp_path / "out", "--log", "neptune")
    assert code == 2
    assert "--log" in err
    assert "neptune" in err
    for name in ("wandb", "tensorboard", "mlflow", "csv"):
        assert name in err
    assert not (tmp_path / "out").exists()
    code, _, err = _cli(capsys, *dirs, "--out", tmp_path / "out", "--log-dir", tmp_path / "logs")
    assert code == 2
    assert "argument --log-dir: only used with --log" in err
    assert not (tmp_path / "out").exists()


def test_python_api_counts_and_warns_a_failing_logger_and_checks_its_arguments(
    dirs: list[Path], tmp_path: Path
) -> None:
    from memcallbacks.loggers import TrackerWarning, make_loggers

    result = run_attack(dirs, methods=("loss",))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    broken = TensorBoardLogger(str(blocker), name="tb")  # a real logger that cannot write
    good = CSVLogger(str(tmp_path), name="csv")
    with pytest.warns(TrackerWarning, match="TensorBoardLogger"):
        failures = log_attack_results(result, [broken, good])
    assert failures >= 2  # its settings, records and metrics each failed
    good.finalize("success")
    assert (Path(good.log_dir) / "metrics.csv").read_text().count("attack/loss/auc") == 1
    assert log_attack_results(result, CSVLogger(str(tmp_path), name="single")) == 0  # one logger, no list
    with pytest.raises(TypeError, match="`loggers` must be Lightning loggers"):
        log_attack_results(result, ["wandb"])
    with pytest.raises(TypeError, match="`result`"):
        log_attack_results(result.to_json(), [good])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`names` can be"):
        make_loggers(["neptune"], tmp_path, project="p", run_name="r")
