"""``lsl report``: tables and plots checked against runs whose logged values are known."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART, run_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from lsl.diagnostics import TOP_CLASS_SHARE
from lsl.report import (
    load_runs,
    plot_against_alpha,
    read_scalars,
    run_metrics,
    summarise,
    truncated_events,
    write_report,
)
from lsl.report.command import SCALED_ECE_LINES
from lsl.sweep import DONE_FILE, FAILED_FILE, RUN_FILE, TEACHER_CONFIG_FILE, load_sweep, mark_done, write_run_files

LS = {"class_path": "lsl.losses.LabelSmoothing", "init_args": {"alpha": 0.4}}
CE = {"class_path": "lsl.losses.CrossEntropy"}
FC = {"class_path": "lsl.losses.ForwardCorrection", "init_args": {"alpha": None, "matrix": None, "path": None}}


def config(loss: dict, rate: float = 0.4, model: str = "lsl.Classifier") -> dict:
    return {"seed_everything": 0,
            "model": {"class_path": model, "init_args": {"loss": loss}},
            "data": {"class_path": "lsl.data.NoisyLabelDataModule", "init_args": {
                "dataset": {"class_path": "lsl.data.FashionMNIST", "init_args": {"root": "x"}},
                "noise": {"class_path": "lsl.noise.SymmetricNoise", "init_args": {"rate": rate, "convention": "flip"}}}}}


def write_events(directory: Path, scalars: dict[str, list[tuple[int, float]]]) -> None:
    writer = SummaryWriter(str(directory))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def fake_run(sweep_dir: Path, point: str, labels: dict, run_config: dict, scalars: dict | None = None,
             stage: str = "", error: str | None = None, teacher_run: Path | None = None,
             wall_s: float = 1.0) -> Path:
    directory = sweep_dir / point / stage if stage else sweep_dir / point
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(run_config))
    (directory / RUN_FILE).write_text(json.dumps({"sweep": sweep_dir.name, "point": point, "stage": stage,
                                                  "labels": labels, "teacher_run": str(teacher_run) if teacher_run else None}))
    if scalars is not None:
        write_events(directory, scalars)
    if error is None:
        (directory / DONE_FILE).write_text(json.dumps({"wall_s": wall_s}))
    else:
        (directory / FAILED_FILE).write_text(json.dumps({"exit_code": 2, "error": error}))
    return directory


def classifier_scalars(acc: float, ece: float, best_acc: float, memorised: list[float], val: list[float]) -> dict:
    steps = [10 * (epoch + 1) for epoch in range(len(val))]
    return {"test/acc": [(steps[-1], acc)], "test/ece": [(steps[-1], ece)], "test/nll": [(steps[-1], 1.0)],
            "test_best/acc": [(steps[-1], best_acc)], "test_best/ece": [(steps[-1], ece / 2)],
            "test_best/nll": [(steps[-1], 0.5)],
            "train/memorised": list(zip(steps, memorised)), "train/corrected": list(zip(steps, [0.5] * len(val))),
            "val/acc_noisy": list(zip(steps, val))}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """2 seeds each of CE and LS 0.4 at 40% noise, one FC that diverged, and one run still going."""
    root = tmp_path / "logs" / "study"
    for seed, (acc, val) in enumerate([(0.70, [0.5, 0.6, 0.6]), (0.74, [0.5, 0.7, 0.6])]):
        fake_run(root, f"loss=ce__seed_everything={seed}", {"model.init_args.loss": "ce", "seed_everything": str(seed)},
                 config(CE), classifier_scalars(acc, 0.2, 0.8, [0.1, 0.3, 0.9], val))
        fake_run(root, f"loss=ls0.4__seed_everything={seed}", {"model.init_args.loss": "ls0.4", "seed_everything": str(seed)},
                 config(LS), classifier_scalars(acc + 0.1, 0.3, 0.85, [0.1, 0.2, 0.4], val))
    fake_run(root, "loss=fc__seed_everything=0", {"model.init_args.loss": "fc", "seed_everything": "0"}, config(FC),
             error="training diverged at step 3")
    unfinished = root / "loss=fc__seed_everything=1"
    unfinished.mkdir()
    (unfinished / RUN_FILE).write_text("{}")
    return root


def test_runs_are_grouped_over_seeds_with_mean_and_sample_std(sweep_dir: Path) -> None:
    results, unfinished = load_runs(sweep_dir)
    assert unfinished == [sweep_dir / "loss=fc__seed_everything=1"]
    summaries = {summary.description["method"]: summary for summary in summarise(results)}
    assert list(summaries) == ["CE", "LS", "FC"]  # the paper's order, not the folders' alphabetical one
    ce, ls = summaries["CE"], summaries["LS"]
    assert ce.description == {"dataset": "FashionMNIST", "noise": "SymmetricNoise", "rate": 0.4, "method": "CE",
                              "alpha": 0.0, "transition": None, "teacher": None, "stage": ""}
    assert ls.description["alpha"] == 0.4
    assert ce.mean("acc") == pytest.approx(0.72) and ce.std("acc") == pytest.approx(0.0282843, abs=1e-6)
    assert ls.mean("acc") == pytest.approx(0.82)
    assert ce.mean("memorised") == pytest.approx(0.9) and ls.mean("memorised") == pytest.approx(0.4)
    assert summaries["FC"].failed and not summaries["FC"].finished and summaries["FC"].mean("acc") is None


def test_the_best_epoch_is_the_first_maximum_of_the_noisy_validation_accuracy(sweep_dir: Path) -> None:
    metrics, curve = run_metrics(read_scalars(sweep_dir / "loss=ce__seed_everything=0"))
    # val/acc_noisy 0.5, 0.6, 0.6: epoch 2 (the first maximum), not the last.
    assert metrics["best_epoch"] == 2 and metrics["best_memorised"] == pytest.approx(0.3)
    assert metrics["best_acc"] == pytest.approx(0.8) and metrics["acc"] == pytest.approx(0.70)
    assert curve == pytest.approx([0.1, 0.3, 0.9])


def test_memorised_and_corrected_read_the_train_eval_diagnostic_when_a_run_has_it(tmp_path: Path, capsys) -> None:
    root = tmp_path / "logs" / "study"
    val = [0.5, 0.6, 0.6]
    diagnostic = {"train_eval/memorised": [(30, 0.25)], "train_eval/acc_clean_mislabelled": [(30, 0.6)]}
    with_it = fake_run(root, "loss=ce__seed_everything=0", {"model.init_args.loss": "ce", "seed_everything": "0"},
                       config(CE), {**classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.9], val), **diagnostic})
    fake_run(root, "loss=ce__seed_everything=1", {"model.init_args.loss": "ce", "seed_everything": "1"},
             config(CE), classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.7], val))
    metrics, curve = run_metrics(read_scalars(with_it))
    # The last epoch's columns are the diagnostic's; the best epoch (2) and the curve stay in-training counts.
    assert metrics["memorised"] == pytest.approx(0.25) and metrics["corrected"] == pytest.approx(0.6)
    assert metrics["best_memorised"] == pytest.approx(0.3) and metrics["best_corrected"] == pytest.approx(0.5)
    assert curve == pytest.approx([0.1, 0.3, 0.9])

    # A run without the diagnostic beside it: one column must hold one measurement, so both show train/*
    # (a mean of 0.25 end-of-fit and 0.7 in-training would be neither).
    results, _ = load_runs(root)
    assert [run.denoising_source for run in results] == ["train", "train"]
    [ce] = summarise(results)
    assert ce.values("memorised") == pytest.approx([0.9, 0.7]) and ce.values("corrected") == pytest.approx([0.5, 0.5])
    assert run_main(["report", str(root)]) == 0
    table = (root / "report" / "results.md").read_text()
    assert "| CE | 0 | 2 | 70.00 +- 0.00 | 0.200 +- 0.000 | 1.000 +- 0.000 | 80.0 +- 14.1 | 50.0 +- 0.0 |" in table
    assert "(train/memorised, train/corrected), in every run: 1 of the 2 runs were made before lsl logged" in table

    (root / "loss=ce__seed_everything=1" / DONE_FILE).unlink()  # unfinished now: only the run with the diagnostic
    assert run_main(["report", str(root)]) == 0
    table = (root / "report" / "results.md").read_text()
    assert "| CE | 0 | 1 | 70.00 | 0.200 | 1.000 | 25.0 | 60.0 |" in table
    assert ("as the paper measures it (train_eval/memorised, train_eval/acc_clean_mislabelled); at the best epoch, "
            "over the epoch's augmented batches (train/memorised, train/corrected)") in table


def test_the_calibration_table_shows_each_temperature_and_the_ece_after_it(tmp_path: Path) -> None:
    root = tmp_path / "logs" / "study"
    val = [0.5, 0.6, 0.6]
    for seed, shift in enumerate([0.0, 0.2]):
        scaled = {f"test/{tag}_{name}": [(30, value + shift)] for tag, values in (
            ("temperature", {"noisy": 2.0, "noise_aware": 1.0, "oracle": 0.5}),
            ("ece_scaled", {"noisy": 0.3, "noise_aware": 0.1, "oracle": 0.05})) for name, value in values.items()}
        fake_run(root, f"loss=ls0.4__seed_everything={seed}", {"model.init_args.loss": "ls0.4",
                                                               "seed_everything": str(seed)},
                 config(LS), {**classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.9], val), **scaled})
    [ls] = summarise(load_runs(root)[0])
    assert ls.mean("t_noise_aware") == pytest.approx(1.1) and ls.mean("ece_oracle") == pytest.approx(0.15)
    assert run_main(["report", str(root)]) == 0
    table = (root / "report" / "results.md").read_text()
    assert "## Calibration after temperature scaling (last epoch)" in table
    assert "| ece | t_noisy | ece_noisy | t_noise_aware | ece_noise_aware | t_oracle | ece_oracle |" in table
    assert ("| LS | 0.4 | 2 | 0.200 +- 0.000 | 2.10 +- 0.14 | 0.400 +- 0.141 | 1.10 +- 0.14 | 0.200 +- 0.141 "
            "| 0.60 +- 0.14 | 0.150 +- 0.141 |") in table
    with open(root / "report" / "results.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["t_oracle_mean"]) == pytest.approx(0.6) and float(row["ece_noisy_mean"]) == pytest.approx(0.4)
    assert (root / "report" / "ece_scaled_vs_alpha.png").is_file()
    figure = plot_against_alpha([ls], "ece", None, "test ECE", extra_metrics=SCALED_ECE_LINES)
    lines = {container.get_label(): tuple(container.lines[0].get_xydata().ravel())
             for container in figure.axes[0].containers}
    expected = {"LS (last epoch)": 0.2, "LS (after noisy t)": 0.4, "LS (after noise-aware t)": 0.2,
                "LS (after oracle t)": 0.15}
    assert set(lines) == set(expected)
    assert all(lines[label] == pytest.approx((0.4, ece)) for label, ece in expected.items())


def test_the_denoising_diagnostic_table_gives_the_papers_three_accuracies_and_the_memorised_share(tmp_path: Path) -> None:
    root = tmp_path / "logs" / "study"
    for seed, shift in enumerate([0.0, 0.02]):
        diagnostic = {"train_eval/acc_clean": [(30, 0.80 + shift)], "train_eval/acc_clean_correct": [(30, 0.90 + shift)],
                      "train_eval/acc_clean_mislabelled": [(30, 0.40 + shift)], "train_eval/memorised": [(30, 0.5)]}
        fake_run(root, f"loss=ce__seed_everything={seed}", {"model.init_args.loss": "ce", "seed_everything": str(seed)},
                 config(CE), {**classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.9], [0.5, 0.6, 0.6]), **diagnostic})
    assert run_main(["report", str(root)]) == 0
    table = (root / "report" / "results.md").read_text()
    section = table.split("## Denoising diagnostic (last epoch: the training set against its true labels)")[1]
    assert "| overall | correctly labelled | mislabelled | memorised |" in section.splitlines()[2]
    assert "| CE | 0 | 2 | 81.00 +- 1.41 | 91.00 +- 1.41 | 41.00 +- 1.41 | 50.0 +- 0.0 |" in section
    assert "accuracy (%) against the true labels overall, on the correctly labelled and on the mislabelled" in table
    with open(root / "report" / "results.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["train_correct_mean"]) == pytest.approx(0.91)


def test_the_cost_table_gives_each_method_s_wall_time_per_run_from_its_done_record(tmp_path: Path) -> None:
    root = tmp_path / "logs" / "study"
    for seed, wall_s in enumerate([600.0, 1200.0]):
        fake_run(root, f"loss=ce__seed_everything={seed}", {"model.init_args.loss": "ce", "seed_everything": str(seed)},
                 config(CE), classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.9], [0.5, 0.6, 0.6]), wall_s=wall_s)
    old = fake_run(root, "loss=ls0.4__seed_everything=0", {"model.init_args.loss": "ls0.4", "seed_everything": "0"},
                   config(LS), classifier_scalars(0.8, 0.2, 0.8, [0.1, 0.3, 0.9], [0.5, 0.6, 0.6]))
    (old / DONE_FILE).write_text("{}")  # no wall time recorded
    assert run_main(["report", str(root)]) == 0
    section = (root / "report" / "results.md").read_text().split("## Cost (wall time per run in minutes, over all its "
                                                                 "attempts)")[1]
    assert "| runs | minutes |" in section.splitlines()[2]
    assert "| CE | 0 | 2 | 15.0 +- 7.1 |" in section and "| LS | 0.4 | 1 | n/a |" in section
    with open(root / "report" / "results.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert float(rows["CE"]["wall_min_mean"]) == pytest.approx(15.0) and rows["LS"]["wall_min_mean"] == ""


def test_runs_without_temperatures_get_no_calibration_table(sweep_dir: Path) -> None:
    assert run_main(["report", str(sweep_dir)]) == 0
    assert "Calibration after temperature scaling" not in (sweep_dir / "report" / "results.md").read_text()
    assert "Denoising diagnostic" not in (sweep_dir / "report" / "results.md").read_text()
    assert (sweep_dir / "report" / "ece_vs_alpha.png").is_file()
    assert not (sweep_dir / "report" / "ece_scaled_vs_alpha.png").exists()


def test_a_resumed_run_keeps_the_later_value_of_a_step_logged_twice(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_events(run, {"test/acc": [(30, 0.1)], "train/memorised": [(10, 0.2), (20, 0.3)]})
    first = next(run.glob("events.out.tfevents.*"))
    os.utime(first, (1, 1))  # the first attempt's file is older
    write_events(run, {"test/acc": [(30, 0.6)], "train/memorised": [(20, 0.4), (30, 0.5)]})
    assert read_scalars(run) == {"test/acc": {30: pytest.approx(0.6)},
                                 "train/memorised": {10: pytest.approx(0.2), 20: pytest.approx(0.4), 30: pytest.approx(0.5)}}


def test_attempts_are_ordered_by_the_time_in_their_file_names_not_by_modification_time(tmp_path: Path) -> None:
    # After `cp -r docs/results/.../runs logs/...` or a git checkout, the modification times say nothing about
    # which attempt came first; here the killed attempt's file (cut mid-record by the kill) looks the newest.
    run = tmp_path / "run"
    for attempt, (created, value) in enumerate([(1_796_000_000, 0.1), (1_796_000_900, 0.6)]):
        write_events(run / "tmp", {"test/acc": [(30, value)]})
        [written] = (run / "tmp").iterdir()
        written.rename(run / f"events.out.tfevents.{created}.node01.cluster.org.{4000 + attempt}.0")
    killed, resumed = sorted(run.glob("events.out.tfevents.*"))
    with killed.open("ab") as file:
        file.write(b"\x10\x00")  # half a record header
    os.utime(resumed, (1, 1))

    assert read_scalars(run) == {"test/acc": {30: pytest.approx(0.6)}}
    assert truncated_events(run) is None


def test_the_nan_epoch_end_of_a_max_steps_run_resumed_by_older_lsl_is_left_out(tmp_path: Path) -> None:
    # Lightning ends the restored epoch of a resumed max_steps fit a second time, with no batch; lsl logged its
    # training metrics, all NaN, one step after the real ones (kept in docs/results/cifar10n_regime). Here the
    # run was resumed twice: mid-run, and after its last epoch (killed before its test had run).
    sweep = tmp_path / "logs" / "study"
    nan = float("nan")
    scalars = classifier_scalars(0.7, 0.2, 0.8, [0.1, 0.3, 0.9], [0.5, 0.6, 0.7])
    for tag in ("train/memorised", "train/corrected", "train/acc_noisy"):
        scalars[tag] = [*scalars.get(tag, [(10, 0.8), (20, 0.8), (30, 0.8)]), (11, nan), (31, nan)]
    fake_run(sweep, "loss=ce__seed_everything=0", {"model.init_args.loss": "ce", "seed_everything": "0"}, config(CE),
             scalars)
    fake_run(sweep, "loss=ce__seed_everything=1", {"model.init_args.loss": "ce", "seed_everything": "1"}, config(CE),
             classifier_scalars(0.7, 0.2, 0.8, [0.3, 0.5, 0.7], [0.5, 0.6, 0.7]))

    [summary] = summarise(load_runs(sweep)[0])

    assert summary.memorisation_curve() == pytest.approx([0.2, 0.4, 0.8])  # epoch by epoch, no NaN, not shifted
    assert summary.values("memorised") == pytest.approx([0.9, 0.7])  # both seeds in the mean of the last epoch
    assert read_scalars(sweep / "loss=ce__seed_everything=0")["val/acc_noisy"] == {
        10: pytest.approx(0.5), 20: pytest.approx(0.6), 30: pytest.approx(0.7)}  # other tags untouched


def test_the_report_writes_tables_csv_and_plots_also_to_tensorboard(sweep_dir: Path, capsys) -> None:
    assert run_main(["report", str(sweep_dir)]) == 0
    assert "4 runs in 3 groups (1 failed, 1 unfinished and left out)" in capsys.readouterr().out
    out = sweep_dir / "report"
    table = (out / "results.md").read_text()
    assert "| FashionMNIST | SymmetricNoise | 0.4 | CE | 0 |  | 2 | 72.00 +- 2.83 | 0.200 +- 0.000 | 1.000 +- 0.000 | " \
           "90.0 +- 0.0 | 50.0 +- 0.0 |" in table
    assert "| FashionMNIST | SymmetricNoise | 0.4 | LS | 0.4 |  | 2 | 82.00 +- 2.83 |" in table
    assert "| FashionMNIST | SymmetricNoise | 0.4 | FC |  | data | 0 (1 failed) | n/a |" in table
    # Best-validation epochs: seed 0 peaks at epoch 2, seed 1 at epoch 2 as well; test_best/acc is 0.8.
    assert "| FashionMNIST | SymmetricNoise | 0.4 | CE | 0 |  | 2 | 2.0 +- 0.0 | 80.00 +- 0.00 | 0.100 +- 0.000 |" in table
    assert "training diverged at step 3" in table and "Best noisy-validation epoch" in table
    # Runs without train_eval/* (made before lsl logged it): memorised and corrected are the in-training counts.
    assert "as their true label, over the epoch's augmented batches. transition: " in table
    with open(out / "results.csv") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert float(rows["CE"]["acc_mean"]) == pytest.approx(0.72) and float(rows["LS"]["best_acc_mean"]) == pytest.approx(0.85)
    assert rows["FC"]["failed"] == "1" and rows["FC"]["acc_mean"] == ""
    for name in ("acc_vs_alpha", "ece_vs_alpha", "memorisation"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_main(["report", str(sweep_dir)]) == 0  # again: the figures are replaced, not added twice
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(out))
    events.Reload()
    assert set(events.Tags()["images"]) == {"report/acc_vs_alpha", "report/ece_vs_alpha", "report/memorisation"}


def test_human_noise_label_sets_are_told_apart(tmp_path: Path) -> None:
    root = tmp_path / "cifar10n"
    for key in ("aggre_label", "worse_label"):
        run_config = config(CE)
        run_config["data"]["init_args"]["noise"] = {"class_path": "lsl.noise.HumanNoise",
                                                    "init_args": {"path": "x.pt", "key": key}}
        fake_run(root, f"noise={key}", {"data.init_args.noise": key}, run_config,
                 classifier_scalars(0.8 if key == "aggre_label" else 0.6, 0.1, 0.8, [0.2], [0.5]))
    write_report(root)
    table = (root / "report" / "results.md").read_text()
    assert "| FashionMNIST | HumanNoise(aggre_label) | CE | 0 | 1 | 80.00 |" in table
    assert "| FashionMNIST | HumanNoise(worse_label) | CE | 0 | 1 | 60.00 |" in table


def test_forward_correction_with_an_estimated_t_and_with_the_data_s_t_are_told_apart(tmp_path: Path) -> None:
    root = tmp_path / "cifar10n_fc"
    estimated = {**FC, "init_args": {**FC["init_args"], "path": "logs/study/T_estimated.npy"}}
    written = {**FC, "init_args": {**FC["init_args"], "matrix": [[0.9, 0.1], [0.2, 0.8]]}}
    symmetric = {**FC, "init_args": {**FC["init_args"], "alpha": 0.4}}
    for label, loss, acc in (("fc-estimated", estimated, 0.5), ("fc-clean", FC, 0.6), ("fc-written", written, 0.7),
                             ("fc-symmetric", symmetric, 0.8)):
        fake_run(root, f"loss={label}", {"model.init_args.loss": label}, config(loss),
                 classifier_scalars(acc, 0.1, acc, [0.2], [0.5]))
    write_report(root)
    table = (root / "report" / "results.md").read_text()
    assert "| dataset | noise | rate | method | alpha | transition | runs | acc |" in table
    assert "| FC |  | logs/study/T_estimated.npy | 1 | 50.00 |" in table
    assert "| FC |  | data | 1 | 60.00 |" in table
    assert re.search(r"\| FC \|  \| matrix [0-9a-f]{8} \| 1 \| 70.00 \|", table)
    assert "| FC | 0.4 |  | 1 | 80.00 |" in table
    assert "transition: the T a loss correction was given" in table
    with open(root / "report" / "results.csv") as csv_file:
        rows = {row["transition"]: row["acc_mean"] for row in csv.DictReader(csv_file)}
    assert float(rows["data"]) == pytest.approx(0.6) and float(rows["logs/study/T_estimated.npy"]) == pytest.approx(0.5)


def test_a_student_group_names_its_teacher(tmp_path: Path) -> None:
    root = tmp_path / "kd"
    for loss, label in ((CE, "ce"), (LS, "ls0.4")):
        point = f"teacher.loss={label}__seed_everything=0"
        labels = {"teacher.model.init_args.loss": label, "seed_everything": "0"}
        teacher = fake_run(root, point, labels, config(loss), classifier_scalars(0.6, 0.1, 0.6, [0.5], [0.5]),
                           stage="teacher")
        fake_run(root, point, labels, config(CE, model="lsl.TeacherStudentModule"),
                 classifier_scalars(0.65, 0.1, 0.6, [0.4], [0.5]), stage="student", teacher_run=teacher)
    write_report(root)
    table = (root / "report" / "results.md").read_text()
    assert "| stage | dataset | noise | rate | teacher | method | alpha | runs |" in table
    ce_student = table.index("| student | FashionMNIST | SymmetricNoise | 0.4 | CE | KD |  | 1 | 65.00 |")
    assert ce_student < table.index("| student | FashionMNIST | SymmetricNoise | 0.4 | LS 0.4 | KD |  | 1 | 65.00 |")
    assert "| teacher | FashionMNIST | SymmetricNoise | 0.4 |  | LS | 0.4 | 1 | 60.00 |" in table


def test_a_students_teacher_is_found_from_its_checkpoint_when_the_recorded_run_folder_is_not_there(
        tmp_path: Path, monkeypatch) -> None:
    """A sweep run with the default ``--logs logs`` recorded ``teacher_run`` relative to where it ran: a report made
    from another folder named every such student's teacher CE (the description of an empty config)."""
    root = tmp_path / "kd"
    labels = {"teacher.model.init_args.loss": "ls0.4", "seed_everything": "0"}
    teacher = fake_run(tmp_path / "teachers", "loss=ls0.4", labels, config(LS),
                       classifier_scalars(0.6, 0.1, 0.6, [0.5], [0.5]))
    student_config = config(CE, model="lsl.TeacherStudentModule")
    student_config["model"]["init_args"]["teacher_checkpoint"] = str(teacher / "checkpoints" / "last.ckpt")
    student = fake_run(root, "teacher.loss=ls0.4", labels, student_config,
                       classifier_scalars(0.65, 0.1, 0.6, [0.4], [0.5]), stage="student",
                       teacher_run=Path("logs/teachers/loss=ls0.4"))
    monkeypatch.chdir(tmp_path)
    [result], _ = load_runs(root)
    assert result.description["teacher"] == "LS 0.4"
    # Neither the recorded folder nor the checkpoint's: the teacher is unknown, not cross-entropy.
    student_config["model"]["init_args"]["teacher_checkpoint"] = str(tmp_path / "gone" / "checkpoints" / "last.ckpt")
    (student / "config.yaml").write_text(yaml.safe_dump(student_config))
    [result], _ = load_runs(root)
    assert result.description["teacher"] == "unknown"


def test_a_student_copied_away_from_its_teacher_names_it_from_the_copy_of_its_config(tmp_path: Path) -> None:
    """An archive of a distillation sweep's students (docs/results keeps run folders without checkpoints, elsewhere
    than the teachers): neither the recorded teacher folder nor the checkpoint's exists there, and the report
    named every teacher "unknown", three rows no reader could tell apart. The copy the student kept names it."""
    root = tmp_path / "kd"
    for loss, label in ((LS, "ls0.4"), (CE, "ce")):
        labels = {"teacher.model.init_args.loss": label, "seed_everything": "0"}
        student_config = config(CE, model="lsl.TeacherStudentModule")
        student_config["model"]["init_args"]["teacher_checkpoint"] = f"/gone/{label}/checkpoints/last.ckpt"
        student = fake_run(root, f"teacher.loss={label}", labels, student_config,
                           classifier_scalars(0.65, 0.1, 0.6, [0.4], [0.5]), stage="student",
                           teacher_run=Path(f"/gone/{label}"))
        (student / TEACHER_CONFIG_FILE).write_text(yaml.safe_dump(config(loss)))
    results, _ = load_runs(root)
    assert sorted(result.description["teacher"] for result in results) == ["CE", "LS 0.4"]


def test_out_puts_the_report_elsewhere_and_a_config_file_may_give_the_options(sweep_dir: Path, tmp_path: Path,
                                                                            capsys) -> None:
    assert run_main(["report", str(sweep_dir), "--out", str(tmp_path / "elsewhere")]) == 0
    assert f"-> {tmp_path / 'elsewhere'}/results.md" in capsys.readouterr().out
    assert (tmp_path / "elsewhere" / "results.md").is_file() and not (sweep_dir / "report").exists()

    (tmp_path / "report.yaml").write_text(yaml.safe_dump({"sweep_dir": str(sweep_dir), "out": str(tmp_path / "from_file")}))
    assert run_main(["report", "--config", str(tmp_path / "report.yaml")]) == 0
    assert (tmp_path / "from_file" / "results.csv").is_file()


def test_a_folder_without_finished_runs_exits_2(tmp_path: Path, capsys) -> None:
    assert run_main(["report", str(tmp_path)]) == 2
    assert "no finished runs under" in capsys.readouterr().err
    assert run_main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_the_alpha_plot_joins_cross_entropy_to_the_ls_line_at_alpha_0(sweep_dir: Path) -> None:
    summaries = summarise(load_runs(sweep_dir)[0])
    figure = plot_against_alpha(summaries, "acc", "best_acc", "test accuracy (%)", scale=100)
    containers = {container.get_label(): container for container in figure.axes[0].containers}
    assert set(containers) == {"LS (alpha 0: CE) (last epoch)", "LS (alpha 0: CE) (best val)"}
    last = containers["LS (alpha 0: CE) (last epoch)"].lines[0].get_xydata()
    assert last.ravel().tolist() == pytest.approx([0.0, 72.0, 0.4, 82.0])
    assert figure.axes[0].get_title() == "SymmetricNoise 0.4"


# ------------------------------------------------------------------------- runs whose numbers are not results


def test_finished_runs_whose_events_are_deleted_truncated_or_lack_test_acc_are_listed_not_averaged(
        sweep_dir: Path, capsys) -> None:
    deleted = sweep_dir / "loss=ce__seed_everything=1"
    next(deleted.glob("events.out.tfevents.*")).unlink()
    truncated = next((sweep_dir / "loss=ls0.4__seed_everything=1").glob("events.out.tfevents.*"))
    truncated.write_bytes(truncated.read_bytes()[:len(truncated.read_bytes()) // 2])
    # A group whose only run logged no test/acc (cut short): no "n/a" row for it.
    no_test = fake_run(sweep_dir, "loss=ls0.8__seed_everything=0", {"model.init_args.loss": "ls0.8", "seed_everything": "0"},
                       config({**LS, "init_args": {"alpha": 0.8}}), {"train/memorised": [(10, 0.5)]})
    assert run_main(["report", str(sweep_dir)]) == 0
    assert "2 runs in 3 groups (1 failed, 3 unreadable and left out, 1 unfinished and left out)" in capsys.readouterr().out
    table = (sweep_dir / "report" / "results.md").read_text()
    assert "| FashionMNIST | SymmetricNoise | 0.4 | CE | 0 |  | 1 | 70.00 |" in table  # seed 0 alone
    assert "| FashionMNIST | SymmetricNoise | 0.4 | LS | 0.4 |  | 1 | 80.00 |" in table
    assert "| LS | 0.8 |" not in table
    assert table.count("n/a") == 5 + 6 + 1  # only the failed FC's row, in each table (cost too): no numbers
    unreadable = table.split("## Unreadable runs")[1]
    assert f"- `{deleted}`: no TensorBoard event files" in unreadable
    assert f"- `{truncated.parent}`: {truncated.name} is truncated" in unreadable
    assert f"- `{no_test}`: its event files have no test/acc" in unreadable
    with open(sweep_dir / "report" / "results.csv") as handle:
        assert {row["alpha"]: row["runs"] for row in csv.DictReader(handle)} == {"0": "1", "0.4": "1", "": "0"}


def test_a_truncated_events_file_of_a_killed_and_resumed_attempt_does_not_make_the_run_unreadable(
        sweep_dir: Path) -> None:
    run = sweep_dir / "loss=ce__seed_everything=0"
    first = next(run.glob("events.out.tfevents.*"))
    first.write_bytes(first.read_bytes()[:-5])  # killed while writing; the resumed attempt wrote the rest again
    os.utime(first, (1, 1))
    write_events(run, {"test/acc": [(30, 0.75)]})
    [result] = [result for result in load_runs(sweep_dir)[0] if result.directory == run]
    assert result.unreadable is None and result.metrics["acc"] == pytest.approx(0.75)
    newest = max(run.glob("events.out.tfevents.*"))  # by the creation time and counter in the names
    newest.write_bytes(newest.read_bytes()[:-5])  # the newest file is truncated: what the run logged last is lost
    [result] = [result for result in load_runs(sweep_dir)[0] if result.directory == run]
    assert result.unreadable is not None and "is truncated" in result.unreadable


def test_collapsed_runs_stay_in_the_table_marked_and_listed_with_their_share(sweep_dir: Path, capsys) -> None:
    for seed, share in enumerate([0.97, 0.89]):
        scalars = classifier_scalars(0.1 if share > 0.9 else 0.5, 0.5, 0.1, [0.9], [0.1])
        fake_run(sweep_dir, f"loss=bc__seed_everything={seed}", {"model.init_args.loss": "bc", "seed_everything": str(seed)},
                 config({"class_path": "lsl.losses.BackwardCorrection", "init_args": {"alpha": None}}),
                 {**scalars, TOP_CLASS_SHARE: [(10, share)]})
    assert run_main(["report", str(sweep_dir)]) == 0
    assert "6 runs in 4 groups (1 failed, 1 collapsed (marked), 1 unfinished and left out)" in capsys.readouterr().out
    table = (sweep_dir / "report" / "results.md").read_text()
    assert "| FashionMNIST | SymmetricNoise | 0.4 | BC |  |  | 2 (1 collapsed) | 30.00 +- 28.28 |" in table
    assert "| CE | 0 |  | 2 | 72.00" in table  # no share logged: not collapsed
    collapsed_section = table.split("## Collapsed runs")[1]
    assert f"- `{sweep_dir / 'loss=bc__seed_everything=0'}`: top class share 97.0%" in collapsed_section
    assert "loss=bc__seed_everything=1" not in collapsed_section  # 89% is under the threshold
    with open(sweep_dir / "report" / "results.csv") as handle:
        assert {row["method"]: row["collapsed"] for row in csv.DictReader(handle)} == {"CE": "0", "LS": "0", "FC": "0",
                                                                                      "BC": "1"}


def test_stale_runs_of_an_edited_sweep_are_listed_and_left_out_of_the_means(tmp_path: Path, capsys) -> None:
    sweep_file = tmp_path / "study.yaml"
    sweep_file.write_text(f"""
config: {QUICKSTART}
grid:
  model.init_args.loss:
    ce: {{class_path: lsl.losses.CrossEntropy}}
    ls0.4: {{class_path: lsl.losses.LabelSmoothing, init_args: {{alpha: 0.4}}}}
  seed_everything: [0, 1]
""")
    sweep = load_sweep(sweep_file)
    for run in sweep.runs(tmp_path / "logs"):
        write_run_files(sweep, run)
        loss = CE if "loss=ce" in run.point else LS
        (run.directory / "config.yaml").write_text(yaml.safe_dump(config(loss)))
        write_events(run.directory, classifier_scalars(0.7 if loss is CE else 0.8, 0.1, 0.7, [0.5], [0.5]))
        mark_done(run, 1.0)
    root = tmp_path / "logs" / "study"
    assert run_main(["report", str(root)]) == 0
    assert "4 runs in 2 groups (0 failed, 0 unfinished and left out)" in capsys.readouterr().out
    sweep_file.write_text(sweep_file.read_text().replace("alpha: 0.4", "alpha: 0.6"))  # the label ls0.4 is stale
    old = root / "loss=ce__seed_everything=1" / DONE_FILE
    old.write_text('{"wall_s": 1.0}')  # a run made before fingerprints were recorded
    assert run_main(["report", str(root)]) == 0
    assert "1 runs in 1 groups (0 failed, 3 stale and left out, 0 unfinished and left out)" in capsys.readouterr().out
    table = (root / "report" / "results.md").read_text()
    assert "| CE | 0 | 1 | 70.00 |" in table and "| LS |" not in table
    stale = table.split("## Stale runs")[1]
    for seed in (0, 1):
        assert f"- `{root / f'loss=ls0.4__seed_everything={seed}'}`: made with a different config (study.yaml or a " \
               "base config changed since)" in stale
    assert f"- `{old.parent}`: made before lsl recorded what a run runs (no fingerprint)" in stale
    sweep_file.unlink()  # nothing to compare with: the runs are reported as they are
    assert run_main(["report", str(root)]) == 0
    assert "4 runs in 2 groups (0 failed, 0 unfinished and left out)" in capsys.readouterr().out
