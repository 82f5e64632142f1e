"""``lsl sweep``: grid expansion, stages, resuming, failures, the SLURM scripts, and every sweep file."""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, QUICKSTART, QUIET, run_main, scalars

import lsl.sweep.command
from lsl.cli import fit_config_checker
from lsl.errors import ConfigError
from lsl.sweep import (
    DONE_FILE,
    FAILED_FILE,
    RUN_FILE,
    TEACHER_CONFIG_FILE,
    LocalRunner,
    SlurmOptions,
    config_sections,
    load_sweep,
    nested,
    sweep_command,
    write_run_files,
    write_slurm,
)

SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


def write_sweep(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


DISTILL_SWEEP = f"""
    name: kd
    overrides:
      trainer.max_epochs: 1
    stages:
      teacher:
        config: {QUICKSTART}
      student:
        config: {CONFIGS / "quickstart_distill.yaml"}
        teacher: teacher
        overrides:
          model.init_args.temperature: 2.0
    grid:
      teacher.model.init_args.loss:
        ce: {{class_path: lsl.losses.CrossEntropy}}
        ls: {{class_path: lsl.losses.LabelSmoothing, init_args: {{alpha: 0.4}}}}
      seed_everything: [0, 1, 2]
"""


# --------------------------------------------------------------------------------------------- expansion


def test_the_grid_is_the_product_of_its_axes_with_readable_point_names(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, f"""
        config: {QUICKSTART}
        overrides: {{trainer.max_epochs: 3}}
        grid:
          data.init_args.noise.init_args.rate: [0.2, 0.4]
          model.init_args.loss:
            - {{class_path: lsl.losses.CrossEntropy}}
            - {{class_path: lsl.losses.LabelSmoothing, init_args: {{alpha: 0.1}}}}
            - {{class_path: lsl.losses.LabelSmoothing, init_args: {{alpha: 0.4}}}}
          seed_everything: [0, 1]
    """))
    runs = sweep.runs(tmp_path / "logs")
    assert sweep.name == "sweep" and len(runs) == 2 * 3 * 2
    assert len({run.point for run in runs}) == 12
    assert runs[0].point == "rate=0.2__loss=CrossEntropy__seed_everything=0"
    assert runs[-1].point == "rate=0.4__loss=LabelSmoothing-alpha0.4__seed_everything=1"
    last = runs[-1]
    assert last.directory == tmp_path / "logs" / "sweep" / last.point
    assert last.overrides["trainer.max_epochs"] == 3
    assert last.overrides["data.init_args.noise.init_args.rate"] == 0.4
    assert last.overrides["model.init_args.loss"] == {"class_path": "lsl.losses.LabelSmoothing",
                                                       "init_args": {"alpha": 0.4}}
    logger = last.overrides["trainer.logger"]["init_args"]
    assert Path(logger["save_dir"]) / logger["name"] / logger["version"] == last.directory


def test_stages_scope_their_keys_and_the_student_gets_its_teachers_checkpoint(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, DISTILL_SWEEP))
    runs = sweep.runs(tmp_path / "logs")
    assert [run.stage.name for run in runs[:4]] == ["teacher", "student", "teacher", "student"]
    assert len(runs) == 2 * 3 * 2
    for teacher, student in zip(runs[::2], runs[1::2]):
        assert teacher.point == student.point and student.teacher is teacher
        assert student.overrides["model.init_args.teacher_checkpoint"] == str(
            (teacher.directory / "checkpoints" / "last.ckpt").absolute())
        # The loss axis is the teacher's; the temperature is the student's; both get the seed and the epochs.
        assert "model.init_args.loss" in teacher.overrides and "model.init_args.loss" not in student.overrides
        assert student.overrides["model.init_args.temperature"] == 2.0
        assert "model.init_args.temperature" not in teacher.overrides
        assert teacher.overrides["seed_everything"] == student.overrides["seed_everything"]
        assert teacher.overrides["trainer.max_epochs"] == student.overrides["trainer.max_epochs"] == 1
        assert student.directory == teacher.directory.parent / "student"
    assert runs[-1].point == "teacher.loss=ls__seed_everything=2"


def test_dotted_overrides_become_the_nested_config_lightning_reads() -> None:
    assert nested({"trainer.max_epochs": 2, "model.init_args.loss": {"class_path": "X"},
                   "model.init_args.loss.init_args.alpha": 0.1}) == {
        "trainer": {"max_epochs": 2},
        "model": {"init_args": {"loss": {"class_path": "X", "init_args": {"alpha": 0.1}}}}}


@pytest.mark.parametrize("text, fragment", [
    ("grid: {seed_everything: [0]}", "exactly one of 'config'"),
    (f"config: {QUICKSTART}\ngrid: {{seed_everything: []}}", "has no values"),
    (f"config: {QUICKSTART}\ngrid: {{sed_everything: [0]}}", "'sed_everything' is neither a config key"),
    (f"config: {QUICKSTART}\ngrid: {{seed_everything: 3}}", "needs a list of values"),
    ("config: missing.yaml", "does not exist"),
    (f"config: {QUICKSTART}\ngird: {{}}", "unknown key(s) ['gird']"),
    (f"config: {QUICKSTART}\nname: 'a b'", "sweep name 'a b'"),
    (f"stages: {{s: {{config: {QUICKSTART}, teacher: t}}}}", "teacher='t' is not an earlier stage"),
    (f"stages: {{model: {{config: {QUICKSTART}}}}}", "stage name 'model'"),
    (f"config: {QUICKSTART}\ngrid: {{model.init_args.loss: {{'a b': 1}}}}", "label 'a b' names a folder"),
])
def test_a_bad_sweep_file_is_a_config_error_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_sweep(write_sweep(tmp_path, text))
    assert fragment in str(error.value)


def test_a_bad_sweep_exits_2_through_the_console_script(tmp_path: Path, capsys) -> None:
    assert run_main(["sweep", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "lsl: error: sweep file" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_the_config_sections_a_sweep_knows_are_those_of_lsl_fits_parser(tmp_path: Path, capsys) -> None:
    """A grid key must start with a section of the `lsl fit` config, and a stage may not be named like one: the
    sections are those `lsl fit --print_config` prints, so a section the CLI gains or loses is known here too."""
    assert run_main(["fit", "--config", QUICKSTART, "--print_config"]) == 0
    printed = set(yaml.safe_load(capsys.readouterr().out))
    assert {"seed_everything", "trainer", "model", "data", "checkpoint", "ckpt_path"} <= printed
    assert config_sections() == printed
    for section in sorted(printed):
        with pytest.raises(ConfigError, match=f"stage name '{section}' must be a plain word"):
            load_sweep(write_sweep(tmp_path, f"stages: {{{section}: {{config: {QUICKSTART}}}}}"))
        sweep = load_sweep(write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{{section}.x: [1]}}"))
        assert list(sweep.axes) == [f"{section}.x"]
    with pytest.raises(ConfigError, match="grid key 'teacher.x' is neither a config key"):
        load_sweep(write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{teacher.x: [1]}}"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.name)
def test_every_sweep_expands_and_each_of_its_values_parses_as_an_lsl_config(path: Path, tmp_path: Path) -> None:
    sweep = load_sweep(path)
    runs = sweep.runs(tmp_path / "logs")
    assert len(runs) == len({run.directory for run in runs}) > 1
    # One run for each value of each axis, in each stage: every override is parsed once, not every product.
    chosen = {}
    for run in runs:
        for key, label in run.labels.items():
            chosen.setdefault((run.stage.name, key, label), run)
    # Parsed by `lsl fit`'s own parser, built once per process (a full `lsl fit --print_config` per value costs
    # seconds each; test_print_config_of_a_run_is_what_the_checker_parses checks the two agree).
    check = fit_config_checker()
    for run in {id(run): run for run in chosen.values()}.values():
        write_run_files(sweep, run)
        parsed = check([str(run.stage.config), str(run.directory / "overrides.yaml")])
        assert parsed.trainer.logger.init_args.save_dir == str(run.directory.parent), run.name
        assert parsed.trainer.default_root_dir == str(run.directory)
        if run.teacher is not None:
            assert parsed.model.init_args.teacher_checkpoint == str(run.teacher.last_checkpoint.absolute())


def test_print_config_of_a_run_is_what_the_checker_parses(tmp_path: Path, capsys) -> None:
    sweep = load_sweep(CONFIGS / "sweeps" / "cifar10_regime_distill.yaml")
    student = next(run for run in sweep.runs(tmp_path / "logs") if run.teacher is not None)
    write_run_files(sweep, student)
    files = [str(student.stage.config), str(student.directory / "overrides.yaml")]
    assert run_main(["fit", *[part for path in files for part in ("--config", path)], "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    parsed = fit_config_checker()(files).as_dict()
    for section in ("trainer", "data", "seed_everything"):
        assert printed[section] == parsed[section], section
    # The model's arguments linked from the data module (noise, num_classes) are not printed; the rest agree.
    assert printed["model"]["class_path"] == parsed["model"]["class_path"]
    model = parsed["model"]["init_args"]
    assert printed["model"]["init_args"] == {key: model[key] for key in printed["model"]["init_args"]}
    assert model["teacher_checkpoint"] == str(student.teacher.last_checkpoint.absolute())


@pytest.mark.parametrize("grid, overrides, named", [
    ("{model.init_args.los: [0.1], seed_everything: [0, 1]}", "{}", "grid key 'model.init_args.los'"),
    ("{seed_everything: [0, 1]}", "{trainer.max_epoch: 2}", "override 'trainer.max_epoch'"),
    ("{model.init_args.loss.init_args.alhpa: [0.1, 0.4]}", "{}", "grid key 'model.init_args.loss.init_args.alhpa'"),
    ("{seed_everything: [0, zero]}", "{}", "grid key 'seed_everything'"),
    # The alpha is fine beside the grid's loss, which takes one (not beside the base's cross-entropy, which
    # takes none): the misspelt key is blamed, not the alpha.
    ("{model.init_args.loss: [{class_path: lsl.losses.LabelSmoothing}], model.init_args.los: [1]}",
     "{model.init_args.loss.init_args.alpha: 0.2}", "grid key 'model.init_args.los'"),
])
@pytest.mark.parametrize("mode", [[], ["--dry-run"], ["--slurm"]], ids=["run", "dry-run", "slurm"])
def test_a_key_lsl_fit_rejects_stops_the_sweep_before_any_run_naming_it(tmp_path: Path, monkeypatch, grid: str,
                                                                        overrides: str, named: str, mode) -> None:
    monkeypatch.chdir(tmp_path)
    sweep_file = write_sweep(tmp_path, f"config: {CONFIGS / 'fashion_mnist' / 'ce.yaml'}\noverrides: {overrides}\n"
                                       f"grid: {grid}")
    logs = tmp_path / "logs"
    with pytest.raises(ConfigError) as error:
        sweep_command(["--config", str(sweep_file), "--logs", str(logs), *mode], io.StringIO())
    message = str(error.value)
    assert message.startswith("sweep sweep: ") and named in message and "\n" not in message, message
    assert not logs.exists()


def test_sweep_help_lists_every_flag_and_a_bad_option_is_one_error_line(tmp_path: Path, capsys) -> None:
    assert run_main(["sweep", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lsl sweep --config CONFIG")
    for flag in ("--config", "--print_config", "--parallel", "--logs", "--dry-run", "--retry-failed", "--rerun-stale",
                 "--accept-stale", "--slurm", "--gpus", "--cpus-per-gpu", "--time", "--partition", "--max-concurrent"):
        assert f"  {flag} " in text or f"  {flag}\n" in text, flag
    for argv, fragment in ((["--parallel", "two"], "parallel"), (["--bogus"], "--bogus"), ([], "config")):
        config = [] if argv == [] else ["--config", str(write_sweep(tmp_path, f"config: {QUICKSTART}"))]
        assert run_main(["sweep", *config, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lsl: error: ") and err.count("\n") == 1 and fragment in err, err
        assert "`lsl sweep --help` lists the options" in err


def test_print_config_prints_the_options_and_a_sweep_file_that_loads_back_to_the_same_runs(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sweep_file = write_sweep(tmp_path, DISTILL_SWEEP)
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--print_config", "--parallel", "3", "--time", "01:00:00"],
                         out) == 0
    printed = yaml.safe_load(out.getvalue())
    assert printed["config"] == str(sweep_file) and printed["parallel"] == 3 and printed["time"] == "01:00:00"
    assert printed["logs"] == "logs" and printed["dry_run"] is False and printed["partition"] is None
    assert printed["sweep"]["stages"]["student"]["teacher"] == "teacher"
    assert printed["sweep"]["grid"]["seed_everything"] == {"0": 0, "1": 1, "2": 2}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "printed.yaml").write_text(yaml.safe_dump(printed["sweep"], sort_keys=False))
    reloaded = load_sweep(elsewhere / "printed.yaml").runs(tmp_path / "logs")
    original = load_sweep(sweep_file).runs(tmp_path / "logs")
    assert [(run.name, run.fingerprint, run.overrides) for run in reloaded] == \
           [(run.name, run.fingerprint, run.overrides) for run in original]
    assert not (tmp_path / "logs").exists()  # printing runs nothing and writes nothing


def test_sweep_help_imports_neither_lightning_nor_torch(tmp_path: Path) -> None:
    """`lsl sweep --help` must answer at once: nothing on its way imports Lightning or torch."""
    code = ("import sys\n"
            "from lsl.sweep.command import parser\n"
            "try:\n"
            "    parser().parse_args(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted({name.split('.')[0] for name in sys.modules} & {'lightning', 'torch'}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    assert "usage: lsl sweep" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


def test_rerun_stale_and_accept_stale_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--rerun-stale and --accept-stale: pass one"):
        sweep_command(["--config", str(write_sweep(tmp_path, f"config: {QUICKSTART}")), "--rerun-stale",
                       "--accept-stale"], io.StringIO())


def test_a_misspelt_key_is_one_error_line_from_the_console_script(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sweep_file = write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{model.init_args.los: [0.1]}}")
    assert run_main(["sweep", "--config", str(sweep_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lsl: error: sweep sweep: grid key 'model.init_args.los' is not "
                                                     "accepted by `lsl fit`") and "'los'" in err, err
    assert list(tmp_path.iterdir()) == [sweep_file]


# ------------------------------------------------------------------------------------- running locally

FAKE_LSL = """
import os, pathlib, sys, time
arguments = sys.argv[1:]
overrides = pathlib.Path(arguments[arguments.index("--config", 2) + 1])
text = overrides.read_text()
time.sleep(float(os.environ.get("FAKE_LSL_SECONDS", "0.05")))
if "loss=fail" in text:
    print("lsl: error: training diverged at step 3: the loss is nan")
    sys.exit(2)
(overrides.parent / "fake_ran").write_text(" ".join(arguments))
"""


def fake_runner(sweep, runs, tmp_path: Path, **options) -> tuple[LocalRunner, io.StringIO]:
    script = tmp_path / "fake_lsl.py"
    script.write_text(FAKE_LSL)
    out = io.StringIO()
    return LocalRunner(sweep, runs, parallel=2, out=out, poll_s=0.01, lsl_command=[sys.executable, str(script)],
                       **options), out


def test_the_local_runner_runs_teachers_before_students_and_skips_what_is_done(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, DISTILL_SWEEP))
    runs = sweep.runs(tmp_path / "logs")
    runner, out = fake_runner(sweep, runs, tmp_path)
    assert runner.run() == 0
    assert all((run.directory / DONE_FILE).is_file() for run in runs)
    log = out.getvalue()
    for teacher, student in zip(runs[::2], runs[1::2]):
        assert log.index(f"finished {teacher.name}") < log.index(f"started {student.name}")
    assert "12/12 done, 0 running, 0 failed" in log
    # Started again, nothing runs; a run whose marker is gone runs again, resuming from its last.ckpt.
    (runs[3].directory / DONE_FILE).unlink()
    (runs[3].directory / "checkpoints").mkdir()
    (runs[3].directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs[3].directory / "fake_ran").unlink()
    runner, out = fake_runner(sweep, sweep.runs(tmp_path / "logs"), tmp_path)
    assert runner.run() == 0
    assert "11 already done, 1 to run" in out.getvalue()
    assert [run for run in runs if (run.directory / "fake_ran").exists() and
            "--ckpt_path" in (run.directory / "fake_ran").read_text()] == [runs[3]]


def test_a_failed_teacher_fails_its_student_and_is_recorded_not_retried(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, DISTILL_SWEEP.replace("ls: {", "fail: {")))
    runs = sweep.runs(tmp_path / "logs")
    runner, out = fake_runner(sweep, runs, tmp_path)
    assert runner.run() == 6  # 3 failed teachers and their 3 students
    failed_teachers = [run for run in runs if run.stage.name == "teacher" and "fail" in run.point]
    for teacher in failed_teachers:
        record = json.loads((teacher.directory / FAILED_FILE).read_text())
        assert record["exit_code"] == 2 and record["error"] == "training diverged at step 3: the loss is nan"
    assert out.getvalue().count("skipped") == 3 and "its teacher" in out.getvalue()
    runner, out = fake_runner(sweep, sweep.runs(tmp_path / "logs"), tmp_path)
    assert runner.run() == 6 and "6 already done, 0 to run" in out.getvalue()
    assert "3 failed before, not retried (--retry-failed); 3 wait on a failed teacher" in out.getvalue()
    runner, out = fake_runner(sweep, sweep.runs(tmp_path / "logs"), tmp_path, retry_failed=True)
    assert runner.run() == 6 and "6 to run" in out.getvalue()


def test_sigterm_stops_the_running_runs_and_the_next_start_runs_them(tmp_path: Path, monkeypatch) -> None:
    sweep = load_sweep(write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{seed_everything: [0, 1, 2]}}"))
    runs = sweep.runs(tmp_path / "logs")
    monkeypatch.setenv("FAKE_LSL_SECONDS", "60")
    runner, out = fake_runner(sweep, runs, tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert time.monotonic() - started < 30  # the 60 s children were killed, not waited for
    assert "interrupted: 2 running runs stopped" in out.getvalue()
    assert not any((run.directory / DONE_FILE).exists() or (run.directory / FAILED_FILE).exists() for run in runs)
    assert signal.getsignal(signal.SIGTERM) is handler  # the runner's own handler is gone again
    monkeypatch.setenv("FAKE_LSL_SECONDS", "0")
    runner, out = fake_runner(sweep, sweep.runs(tmp_path / "logs"), tmp_path)
    assert runner.run() == 0 and "0 already done, 3 to run" in out.getvalue()


def test_a_real_sweep_of_quickstart_runs_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, f"""
        name: tiny
        config: {QUICKSTART}
        overrides:
          trainer.max_epochs: 2
          trainer.enable_progress_bar: false
          views.figures: false
          checkpoint.monitor: val/acc_noisy
          checkpoint.mode: max
          checkpoint.save_top_k: 1
          checkpoint.filename: best
        grid:
          seed_everything: [0, 1]
    """)
    logs = tmp_path / "logs"
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--parallel", "2", "--logs", str(logs)], out) == 0
    runs = load_sweep(sweep_file).runs(logs)
    for run in runs:
        assert (run.directory / DONE_FILE).is_file() and (run.directory / "checkpoints" / "best.ckpt").is_file()
        logged = scalars(run.directory)
        assert {"test/acc", "test_best/acc", "val/acc_noisy"} <= set(logged)
        assert len(logged["val/acc_noisy"]) == 2
    first_events = sorted(runs[0].directory.glob("events.out.tfevents.*"))
    # An interrupted sweep: the second run lost its marker, as if killed after its last epoch.
    (runs[1].directory / DONE_FILE).unlink()
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--parallel", "2", "--logs", str(logs)], out) == 0
    assert "1 already done, 1 to run" in out.getvalue()
    assert f"started {runs[1].name} (resuming from its last.ckpt)" in out.getvalue()
    assert sorted(runs[0].directory.glob("events.out.tfevents.*")) == first_events  # the finished run untouched
    assert (runs[1].directory / DONE_FILE).is_file()


def stale_sweep(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A sweep over a copy of the quickstart config (so the test can edit it), 2 seeds x CE and LS."""
    base = tmp_path / "base.yaml"
    base.write_text(Path(QUICKSTART).read_text())
    sweep_file = write_sweep(tmp_path, """
        name: edited
        config: base.yaml
        overrides: {trainer.max_epochs: 1}
        grid:
          model.init_args.loss:
            ce: {class_path: lsl.losses.CrossEntropy}
            ls: {class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.4}}
          seed_everything: [0, 1]
    """)
    return base, sweep_file, tmp_path / "logs"


def fake_sweep(sweep_file: Path, logs: Path, tmp_path: Path, *extra: str) -> str:
    """``lsl sweep`` with the fake ``lsl`` above in its runner; returns what it printed."""
    script = tmp_path / "fake_lsl.py"
    script.write_text(FAKE_LSL)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lsl.sweep.command, "LocalRunner", functools.partial(LocalRunner, lsl_command=[sys.executable, str(script)]))
        assert sweep_command(["--config", str(sweep_file), "--logs", str(logs), "--parallel", "2", *extra], out) == 0
    return out.getvalue()


def test_a_resumed_run_s_wall_time_counts_its_earlier_attempts_up_to_their_last_checkpoint(tmp_path: Path) -> None:
    """A study's cost is read from sweep_done.json: a run interrupted (even killed without a word) and resumed
    must not report only its last attempt."""
    from lsl.sweep import mark_done

    _, sweep_file, logs = stale_sweep(tmp_path)
    sweep = load_sweep(sweep_file)
    run, fresh = sweep.runs(logs)[:2]

    def attempt(trained_s: float) -> None:
        """An attempt that started, wrote its last checkpoint trained_s later, and was killed."""
        write_run_files(sweep, run)
        record = json.loads((run.directory / RUN_FILE).read_text())
        started = record["started_at"] - 1000.0
        (run.directory / RUN_FILE).write_text(json.dumps({**record, "started_at": started}))
        run.last_checkpoint.parent.mkdir(exist_ok=True)
        run.last_checkpoint.write_bytes(b"weights")
        os.utime(run.last_checkpoint, (started + trained_s, started + trained_s))

    attempt(60.0)
    attempt(30.0)
    write_run_files(sweep, run)  # the attempt that finishes
    assert json.loads((run.directory / RUN_FILE).read_text())["earlier_attempts_s"] == pytest.approx(90.0)
    mark_done(run, 10.0)
    done = json.loads((run.directory / DONE_FILE).read_text())
    assert done["wall_s"] == pytest.approx(100.0) and done["attempt_s"] == pytest.approx(10.0)

    # A run that starts from scratch carries nothing, whatever an old record says.
    write_run_files(sweep, fresh)
    record = json.loads((fresh.directory / RUN_FILE).read_text())
    (fresh.directory / RUN_FILE).write_text(json.dumps({**record, "earlier_attempts_s": 500.0}))
    write_run_files(sweep, fresh)
    mark_done(fresh, 10.0)
    assert json.loads((fresh.directory / DONE_FILE).read_text())["wall_s"] == pytest.approx(10.0)


def test_each_run_records_the_fingerprint_of_what_it_ran(tmp_path: Path) -> None:
    base, sweep_file, logs = stale_sweep(tmp_path)
    fake_sweep(sweep_file, logs, tmp_path)
    runs = load_sweep(sweep_file).runs(logs)
    assert len({run.fingerprint for run in runs}) == 4 and all(len(run.fingerprint) == 64 for run in runs)
    for run in runs:
        assert json.loads((run.directory / RUN_FILE).read_text())["fingerprint"] == run.fingerprint
        assert json.loads((run.directory / DONE_FILE).read_text())["fingerprint"] == run.fingerprint
    # What the config says counts, not how it is written: a comment or a moved logs folder changes nothing.
    base.write_text("# a comment\n" + base.read_text())
    assert [run.fingerprint for run in load_sweep(sweep_file).runs(tmp_path / "elsewhere")] == \
           [run.fingerprint for run in runs]
    assert "4 already done, 0 to run" in fake_sweep(sweep_file, logs, tmp_path)


def fc_and_ce_sweep(tmp_path: Path, matrix: str) -> Path:
    """A one-epoch sweep of forward correction with the transition matrix file ``matrix``, and cross-entropy."""
    return write_sweep(tmp_path, f"""
        name: fc
        config: {QUICKSTART}
        overrides: {{trainer.max_epochs: 1}}
        grid:
          model.init_args.loss:
            fc: {{class_path: lsl.losses.ForwardCorrection, init_args: {{path: {matrix}}}}}
            ce: {{class_path: lsl.losses.CrossEntropy}}
          seed_everything: [0]
    """)


def test_a_file_the_overrides_name_counts_by_content_so_a_rewritten_one_makes_its_runs_stale(tmp_path: Path,
                                                                                            monkeypatch) -> None:
    """An estimated T written again (``lsl estimate-t`` with another percentile, another checkpoint) after the FC runs
    that read it finished: those results were made with the old matrix, so the sweep must not count them done."""
    monkeypatch.chdir(tmp_path)
    matrix = tmp_path / "T.npy"
    np.save(matrix, np.full((10, 10), 0.1))
    sweep_file = fc_and_ce_sweep(tmp_path, "T.npy")
    logs = tmp_path / "logs"
    fake_sweep(sweep_file, logs, tmp_path)
    assert "2 already done, 0 to run" in fake_sweep(sweep_file, logs, tmp_path)
    np.save(matrix, np.eye(10) * 0.5 + 0.05)
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--logs", str(logs), "--dry-run"], out) == 0
    assert "  stale  loss=fc__seed_everything=0" in out.getvalue() and "  done   loss=ce__seed_everything=0" in out.getvalue()
    with pytest.raises(ConfigError, match="1 run\\(s\\) were made with a different config"):
        sweep_command(["--config", str(sweep_file), "--logs", str(logs)], io.StringIO())
    np.save(matrix, np.full((10, 10), 0.1))  # the same bytes again: the same run
    assert "2 already done, 0 to run" in fake_sweep(sweep_file, logs, tmp_path)


@pytest.mark.parametrize("mode", [[], ["--slurm"]], ids=["run", "slurm"])
def test_a_run_naming_a_missing_file_is_refused_before_any_run_starts(tmp_path: Path, monkeypatch, mode) -> None:
    """Forward correction with an `lsl estimate-t` matrix not made yet: started, the run would fail at once and be
    recorded as failed, which the next sweep would not retry."""
    monkeypatch.chdir(tmp_path)
    sweep_file = fc_and_ce_sweep(tmp_path, "estimated/T.npy")
    logs = tmp_path / "logs"
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--logs", str(logs), "--dry-run"], out) == 0  # a plan only
    with pytest.raises(ConfigError) as error:
        sweep_command(["--config", str(sweep_file), "--logs", str(logs), *mode], io.StringIO())
    message = str(error.value)
    assert message.startswith("sweep fc: model.init_args.loss.init_args.path='estimated/T.npy' (from grid key "
                              "'model.init_args.loss', run loss=fc__seed_everything=0) is not a file here"), message
    assert not logs.exists()
    (tmp_path / "estimated").mkdir()
    np.save(tmp_path / "estimated" / "T.npy", np.full((10, 10), 0.1))
    assert "2 to run" in fake_sweep(sweep_file, logs, tmp_path)


def test_a_changed_base_config_makes_finished_runs_stale_and_the_sweep_refuses_them(tmp_path: Path, capsys) -> None:
    base, sweep_file, logs = stale_sweep(tmp_path)
    fake_sweep(sweep_file, logs, tmp_path)
    base.write_text(base.read_text().replace("lr: 0.05", "lr: 0.1"))
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--logs", str(logs), "--dry-run"], out) == 0
    listing = out.getvalue()
    assert listing.startswith("sweep edited: 4 runs (0 done, 4 stale: --rerun-stale or --accept-stale)")
    assert listing.count("  stale  ") == 4
    for mode in ([], ["--slurm"]):
        with pytest.raises(ConfigError) as error:
            sweep_command(["--config", str(sweep_file), "--logs", str(logs), *mode], io.StringIO())
        assert str(error.value) == (
            "sweep edited: 4 run(s) were made with a different config (the sweep file, a base config or a file it names "
            "changed): "
            "e.g. loss=ce__seed_everything=0; pass --rerun-stale to run them again from scratch, or --accept-stale "
            "to keep their results")
    assert not (logs / "edited" / "slurm").exists()
    assert run_main(["sweep", "--config", str(sweep_file), "--logs", str(logs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsl: error: sweep edited: 4 run(s) were made with a different config") and err.count("\n") == 1


def test_rerun_stale_runs_them_again_from_scratch_and_accept_stale_keeps_them(tmp_path: Path) -> None:
    base, sweep_file, logs = stale_sweep(tmp_path)
    fake_sweep(sweep_file, logs, tmp_path)
    runs = load_sweep(sweep_file).runs(logs)
    first_run = {run.name: (run.directory / "fake_ran").stat().st_mtime_ns for run in runs}
    # Only the LS runs change: the sweep file gives the label ls another alpha.
    sweep_file.write_text(sweep_file.read_text().replace("alpha: 0.4", "alpha: 0.2"))
    ls_runs = [run for run in load_sweep(sweep_file).runs(logs) if "loss=ls" in run.name]
    for run in ls_runs:
        (run.directory / "events.out.tfevents.1.old").write_bytes(b"old")
        (run.directory / "checkpoints").mkdir()
        (run.directory / "checkpoints" / "last.ckpt").write_bytes(b"old")
    text = fake_sweep(sweep_file, logs, tmp_path, "--accept-stale")
    assert "2 stale run(s) kept as they are (--accept-stale)" in text and "4 already done, 0 to run" in text
    for run in ls_runs:
        assert json.loads((run.directory / DONE_FILE).read_text())["fingerprint"] == run.fingerprint
        assert (run.directory / "fake_ran").stat().st_mtime_ns == first_run[run.name]
    assert "4 already done, 0 to run" in fake_sweep(sweep_file, logs, tmp_path)

    sweep_file.write_text(sweep_file.read_text().replace("alpha: 0.2", "alpha: 0.3"))
    ls_runs = [run for run in load_sweep(sweep_file).runs(logs) if "loss=ls" in run.name]
    text = fake_sweep(sweep_file, logs, tmp_path, "--rerun-stale")
    assert "2 stale run(s) deleted, to run again" in text and "2 already done, 2 to run" in text
    for run in ls_runs:
        assert not (run.directory / "events.out.tfevents.1.old").exists()
        assert not (run.directory / "checkpoints").exists()  # so the run did not resume from the old weights
        assert "--ckpt_path" not in (run.directory / "fake_ran").read_text()
        assert json.loads((run.directory / DONE_FILE).read_text())["fingerprint"] == run.fingerprint
    for run in runs:
        if "loss=ce" in run.name:
            assert (run.directory / "fake_ran").stat().st_mtime_ns == first_run[run.name]


def test_runs_without_a_fingerprint_and_interrupted_runs_of_another_config_are_stale(tmp_path: Path) -> None:
    base, sweep_file, logs = stale_sweep(tmp_path)
    fake_sweep(sweep_file, logs, tmp_path)
    runs = load_sweep(sweep_file).runs(logs)
    (runs[0].directory / DONE_FILE).write_text('{"wall_s": 1.0}\n')  # a run made before fingerprints
    (runs[1].directory / DONE_FILE).unlink()  # interrupted: a last.ckpt to resume from, of another config
    (runs[1].directory / "checkpoints").mkdir()
    (runs[1].directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    run_file = json.loads((runs[1].directory / RUN_FILE).read_text())
    (runs[1].directory / RUN_FILE).write_text(json.dumps({**run_file, "fingerprint": "0" * 64}))
    assert [run.name for run in load_sweep(sweep_file).runs(logs) if run.stale] == [runs[0].name, runs[1].name]
    with pytest.raises(ConfigError, match="2 run\\(s\\) were made with a different config"):
        sweep_command(["--config", str(sweep_file), "--logs", str(logs)], io.StringIO())
    assert "--accept-stale" in str(pytest.raises(ConfigError, sweep_command, ["--config", str(sweep_file), "--logs",
                                                                                 str(logs), "--slurm"]).value)


def test_a_student_of_a_changed_teacher_is_stale_too(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(Path(QUICKSTART).read_text())
    sweep_file = write_sweep(tmp_path, DISTILL_SWEEP.replace(QUICKSTART, str(teacher)))
    before = load_sweep(sweep_file).runs(tmp_path / "logs")
    teacher.write_text(teacher.read_text().replace("width: 32", "width: 16"))
    after = load_sweep(sweep_file).runs(tmp_path / "logs")
    assert all(old.fingerprint != new.fingerprint for old, new in zip(before, after))  # teachers and students


def test_dry_run_lists_each_run_with_its_state_and_command(tmp_path: Path) -> None:
    sweep_file = write_sweep(tmp_path, DISTILL_SWEEP)
    out = io.StringIO()
    assert sweep_command(["--config", str(sweep_file), "--dry-run", "--logs", str(tmp_path / "logs")], out) == 0
    text = out.getvalue()
    assert text.startswith("sweep kd: 12 runs (0 done), 6 grid points x 2 stage(s)")
    assert text.count("todo") == 12 and "(after teacher.loss=ce__seed_everything=0/teacher)" in text
    assert f"lsl fit --config {QUICKSTART} --config {tmp_path}/logs/kd/teacher.loss=ce__seed_everything=0/teacher/" \
           "overrides.yaml" in text
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------------------- a stage borrowed from another sweep


def lending_sweeps(tmp_path: Path, student_grid: str = "ce: {class_path: lsl.losses.CrossEntropy}") -> tuple[Path, Path]:
    """The sweep of ``stale_sweep`` (sweep.yaml, named edited) as teachers, and a distillation sweep (students.yaml)
    whose teacher stage takes seed 0's runs of it."""
    _, lender, _ = stale_sweep(tmp_path)
    borrower = tmp_path / "students.yaml"
    borrower.write_text(textwrap.dedent(f"""
        name: students
        overrides: {{trainer.max_epochs: 1}}
        stages:
          teacher: {{sweep: sweep.yaml}}
          student: {{config: {CONFIGS / "quickstart_distill.yaml"}, teacher: teacher}}
        grid:
          teacher.model.init_args.loss:
            {student_grid}
            ls: {{class_path: lsl.losses.LabelSmoothing, init_args: {{alpha: 0.4}}}}
          seed_everything: [0]
    """))
    return lender, borrower


def test_a_stage_takes_another_sweeps_finished_runs_as_teachers_and_runs_only_the_students(tmp_path: Path) -> None:
    lender, borrower = lending_sweeps(tmp_path)
    logs = tmp_path / "logs"
    fake_sweep(lender, logs, tmp_path)
    teachers = {run.point: run for run in load_sweep(lender).runs(logs)}
    ran_before = {point: (run.directory / "fake_ran").stat().st_mtime_ns for point, run in teachers.items()}
    runs = load_sweep(borrower).runs(logs)
    students = [run for run in runs if not run.borrowed]
    assert [run.name for run in students] == ["teacher.loss=ce__seed_everything=0/student",
                                              "teacher.loss=ls__seed_everything=0/student"]
    for student, lent in zip(students, ["loss=ce__seed_everything=0", "loss=ls__seed_everything=0"]):
        # The teacher is the lender's run with exactly this config: its folder, its fingerprint.
        assert student.teacher.borrowed and student.teacher.directory == teachers[lent].directory
        assert student.teacher.fingerprint == teachers[lent].fingerprint
        assert student.overrides["model.init_args.teacher_checkpoint"] == str(teachers[lent].last_checkpoint.absolute())
    listing = io.StringIO()
    assert sweep_command(["--config", str(borrower), "--logs", str(logs), "--dry-run"], listing) == 0
    assert listing.getvalue().startswith("sweep students: 2 runs (0 done), 2 grid points x 2 stage(s); "
                                         "2 teacher run(s) of sweep edited, run there")
    assert f"  done   teacher.loss=ce__seed_everything=0/teacher: {teachers['loss=ce__seed_everything=0'].directory}" \
           " (sweep edited)" in listing.getvalue()
    printed = fake_sweep(borrower, logs, tmp_path)
    assert "2 runs, 0 already done, 2 to run" in printed and printed.count("started") == 2
    assert all((run.directory / DONE_FILE).is_file() for run in students)
    assert {point: (run.directory / "fake_ran").stat().st_mtime_ns for point, run in teachers.items()} == ran_before
    assert sorted(path.name for path in (logs / "students").iterdir()) == [run.point for run in students]


def test_a_student_whose_borrowed_teacher_is_unfinished_or_of_another_config_is_refused(tmp_path: Path,
                                                                                         capsys) -> None:
    lender, borrower = lending_sweeps(tmp_path)
    logs = tmp_path / "logs"
    for mode in ([], ["--slurm"]):
        with pytest.raises(ConfigError) as error:
            sweep_command(["--config", str(borrower), "--logs", str(logs), *mode], io.StringIO())
        assert str(error.value) == ("sweep students: the teacher of teacher.loss=ce__seed_everything=0/student is run "
                                    "loss=ce__seed_everything=0 of sweep edited, which has not finished: run it first "
                                    f"(lsl sweep --config {lender})")
    assert not logs.exists()
    fake_sweep(lender, logs, tmp_path)
    # The lender's base config changes after its runs: they are stale there, and no student may learn from them.
    base = tmp_path / "base.yaml"
    base.write_text(base.read_text().replace("lr: 0.05", "lr: 0.1"))
    assert run_main(["sweep", "--config", str(borrower), "--logs", str(logs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsl: error: sweep students: the teacher of teacher.loss=ce__seed_everything=0/student, ")
    assert "was made with another config than sweep edited gives it now" in err and err.count("\n") == 1
    assert not (logs / "students").exists()


def test_a_borrowed_stage_asks_only_for_runs_the_lending_sweep_has(tmp_path: Path) -> None:
    _, borrower = lending_sweeps(tmp_path, "ce: {class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.8}}")
    with pytest.raises(ConfigError) as error:
        load_sweep(borrower).runs(tmp_path / "logs")
    assert "stage 'teacher' takes its runs from sweep edited" in str(error.value)
    assert "none of them runs what grid point teacher.loss=ce__seed_everything=0 asks" in str(error.value)


@pytest.mark.parametrize("stage, fragment", [
    ("{sweep: ../sweep.yaml, config: ../base.yaml}", "must be a mapping with a 'config' (its base config) or a 'sweep'"),
    ("{sweep: ../sweep.yaml, overrides: {trainer.max_epochs: 2}}", "remove ['overrides']"),
    ("{sweep: sweep.yaml}", "is this sweep file"),
    ("{sweep: ../staged.yaml}", "only a sweep with one base config"),
    ("{sweep: missing.yaml}", "does not exist"),
])
def test_a_bad_borrowed_stage_is_a_config_error_naming_it(tmp_path: Path, stage: str, fragment: str) -> None:
    lending_sweeps(tmp_path)
    (tmp_path / "staged.yaml").write_text(textwrap.dedent(DISTILL_SWEEP))
    (tmp_path / "bad").mkdir()
    with pytest.raises(ConfigError) as error:
        load_sweep(write_sweep(tmp_path / "bad", f"stages: {{teacher: {stage}}}"))
    assert "stages.teacher" in str(error.value) and fragment in str(error.value)


def test_slurm_writes_no_job_for_a_borrowed_stage(tmp_path: Path, monkeypatch) -> None:
    lender, borrower = lending_sweeps(tmp_path)
    monkeypatch.chdir(tmp_path)
    fake_sweep(lender, Path("logs"), tmp_path)
    out = io.StringIO()
    assert sweep_command(["--config", str(borrower), "--slurm"], out) == 0
    assert "wrote 1 array job script(s) for 2 runs" in out.getvalue()
    assert sorted(path.name for path in (tmp_path / "logs/students/slurm").iterdir()) == ["student.sbatch", "submit.sh"]
    submit = (tmp_path / "logs/students/slurm/submit.sh").read_text()
    assert "job_student=$(sbatch --parsable logs/students/slurm/student.sbatch)" in submit and "teacher" not in submit


def test_print_config_of_a_borrowing_sweep_loads_back_to_the_same_runs(tmp_path: Path) -> None:
    _, borrower = lending_sweeps(tmp_path)
    out = io.StringIO()
    assert sweep_command(["--config", str(borrower), "--print_config"], out) == 0
    printed = yaml.safe_load(out.getvalue())["sweep"]
    assert printed["stages"]["teacher"] == {"sweep": str(tmp_path / "sweep.yaml")}
    (tmp_path / "elsewhere").mkdir()
    again = write_sweep(tmp_path / "elsewhere", yaml.safe_dump(printed, sort_keys=False))
    assert [(run.name, run.fingerprint, run.directory) for run in load_sweep(again).runs(tmp_path / "logs")] == \
           [(run.name, run.fingerprint, run.directory) for run in load_sweep(borrower).runs(tmp_path / "logs")]


class ClosedPipeAfter(io.StringIO):
    """Standard output piped into ``head -n LINES``: the reader is gone once it has its lines."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines

    def flush(self) -> None:
        if self.getvalue().count("\n") > self.lines:
            raise BrokenPipeError(32, "Broken pipe")


def test_dry_run_flushes_each_line_so_a_closed_pipe_stops_the_listing_at_once(tmp_path: Path) -> None:
    """``lsl sweep --dry-run | head -1``: the closed pipe surfaces inside the listing, where ``lsl``'s main can
    catch it, not in the interpreter's flush at exit (a traceback nobody can catch)."""
    out = ClosedPipeAfter(1)
    with pytest.raises(BrokenPipeError):
        sweep_command(["--config", str(write_sweep(tmp_path, DISTILL_SWEEP)), "--dry-run", "--logs",
                       str(tmp_path / "logs")], out)
    assert out.getvalue().count("\n") == 2  # stopped at the first line past what the reader took


# ------------------------------------------------------------------------------------------------ SLURM


def test_slurm_writes_an_array_per_stage_chained_task_by_task(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write_sweep(tmp_path, DISTILL_SWEEP))
    runs = sweep.runs(Path("logs"))
    submit = write_slurm(sweep, runs, SlurmOptions(gpus=2, time="01:00:00", partition="gpu", max_concurrent=4),
                         Path("logs/kd/slurm"))
    teacher = (tmp_path / "logs/kd/slurm/teacher.sbatch").read_text()
    student = (tmp_path / "logs/kd/slurm/student.sbatch").read_text()
    for script, stage in ((teacher, "teacher"), (student, "student")):
        assert "#SBATCH --array=0-5%4" in script
        assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --gres=gpu:2" in script
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=01:00:00" in script
        assert f"#SBATCH --job-name=kd-{stage}" in script
        directories = [line.strip() for line in script.split("runs=(\n")[1].split("\n)")[0].splitlines()]
        assert directories == [str(run.directory) for run in runs if run.stage.name == stage]
        assert ('srun lsl fit --config {config} --config "$run/overrides.yaml" --trainer.accelerator=gpu '
                '--trainer.devices=2 --trainer.num_nodes=1 --trainer.strategy=ddp "${{resume[@]}}"').format(
            config=runs[0 if stage == "teacher" else 1].stage.config) in script
        assert 'if [ -f "$run/sweep_done.json" ]' in script
    lines = submit.read_text().splitlines()
    assert "job_teacher=$(sbatch --parsable logs/kd/slurm/teacher.sbatch)" in lines
    assert "job_student=$(sbatch --parsable --dependency=aftercorr:${job_teacher} logs/kd/slurm/student.sbatch)" in lines
    for run in runs:  # each task's overrides are on disk before anything is submitted
        assert yaml.safe_load((tmp_path / run.directory / "overrides.yaml").read_text())["seed_everything"] in (0, 1, 2)


def test_the_slurm_task_script_runs_a_task_and_marks_it_done(tmp_path: Path, monkeypatch) -> None:
    """The generated script itself, with srun and lsl stubbed: task 1 runs run 1, then finds it done."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{seed_everything: [0, 1, 2]}}"))
    runs = sweep.runs(Path("logs"))
    write_slurm(sweep, runs, SlurmOptions(gpus=1), Path("logs/sweep/slurm"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun $*" >> calls.txt\n')
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "77"}
    for _ in range(2):
        task = subprocess.run(["bash", "logs/sweep/slurm/runs.sbatch"], env=env, capture_output=True, text=True)
        assert task.returncode == 0, task.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == [f"srun lsl fit --config {QUICKSTART} --config {runs[1].directory}/overrides.yaml "
                     "--trainer.accelerator=gpu --trainer.devices=1 --trainer.num_nodes=1"]
    done = json.loads((runs[1].directory / DONE_FILE).read_text())
    assert done["slurm_job"] == "77" and done["fingerprint"] == runs[1].fingerprint  # what the task ran
    assert not runs[1].stale
    assert "finished earlier" in task.stdout


def test_a_requeued_slurm_task_counts_the_time_of_its_earlier_attempts(tmp_path: Path, monkeypatch) -> None:
    """Attempt 1 checkpoints 100 s after it starts and is then requeued (its srun ends non-zero); attempt 2
    resumes and finishes: wall_s holds both, as the local runner counts them; attempt_s the last one's."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write_sweep(tmp_path, f"config: {QUICKSTART}\ngrid: {{seed_everything: [0]}}"))
    [run] = sweep.runs(Path("logs"))
    write_slurm(sweep, [run], SlurmOptions(gpus=1), Path("logs/sweep/slurm"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The first attempt writes last.ckpt stamped 100 s after its start, then is requeued; later ones finish.
    (bin_dir / "srun").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "srun $*" >> calls.txt
        if [ -f requeue_once ]; then
          rm requeue_once
          mkdir -p {run.directory}/checkpoints
          touch -d @$(( $(date +%s) + 100 )) {run.directory}/checkpoints/last.ckpt
          exit 1
        fi
    """))
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "78"}
    (tmp_path / "requeue_once").touch()
    first = subprocess.run(["bash", "logs/sweep/slurm/runs.sbatch"], env=env, capture_output=True, text=True)
    assert first.returncode != 0 and not (run.directory / DONE_FILE).exists()
    second = subprocess.run(["bash", "logs/sweep/slurm/runs.sbatch"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "calls.txt").read_text().splitlines()[1].endswith(
        f"--ckpt_path {run.directory}/checkpoints/last.ckpt")
    done = json.loads((run.directory / DONE_FILE).read_text())
    assert 0 <= done["attempt_s"] <= 5 and 100 <= done["wall_s"] - done["attempt_s"] <= 105, done
    assert done["slurm_job"] == "78" and done["fingerprint"] == run.fingerprint


def test_a_student_keeps_its_teachers_config_locally_and_on_slurm(tmp_path: Path, monkeypatch) -> None:
    """A student's folder holds a copy of its teacher's resolved config, taken when the student starts, so that its
    record reads alone where it is copied (an archive, a report made elsewhere); on SLURM the job script takes it,
    since the teacher has not run when the scripts are written."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write_sweep(tmp_path, DISTILL_SWEEP))
    teacher, student = sweep.runs(Path("logs"))[:2]
    write_run_files(sweep, student)  # the teacher has not finished: nothing to copy yet
    assert not (student.directory / TEACHER_CONFIG_FILE).exists()
    teacher.directory.mkdir(parents=True)
    (teacher.directory / "config.yaml").write_text("model: {init_args: {loss: the teacher's}}\n")
    write_run_files(sweep, student)
    assert (student.directory / TEACHER_CONFIG_FILE).read_text() == (teacher.directory / "config.yaml").read_text()

    write_slurm(sweep, sweep.runs(Path("logs")), SlurmOptions(gpus=1), Path("logs/kd/slurm"))
    (student.directory / TEACHER_CONFIG_FILE).unlink()  # as when the scripts were written before the teacher ran
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "79"}
    task = subprocess.run(["bash", "logs/kd/slurm/student.sbatch"], env=env, capture_output=True, text=True)
    assert task.returncode == 0, task.stderr
    assert (student.directory / TEACHER_CONFIG_FILE).read_text() == (teacher.directory / "config.yaml").read_text()
    assert "teachers=(" not in (tmp_path / "logs/kd/slurm/teacher.sbatch").read_text()


# What `srun` sets in an array task: enough for Lightning's SLURMEnvironment.detect() (the job is not named
# bash or interactive, so it is not an interactive allocation).
SLURM_TASK = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "tiny", "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4241",
              "SLURM_ARRAY_TASK_ID": "0", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
              "SLURM_NODELIST": "localhost", "SLURM_NNODES": "1"}


def test_a_requeued_slurm_run_never_restores_the_hpc_checkpoint_another_run_left_in_the_working_directory(
        tmp_path: Path, monkeypatch) -> None:
    """Lightning on SLURM restores from any hpc_ckpt_*.ckpt in default_root_dir when no ckpt_path is given; the
    array tasks all start in one working directory, so each run must own its default_root_dir."""
    foreign_dir = tmp_path / "foreign"
    foreign_dir.mkdir()
    monkeypatch.chdir(foreign_dir)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--seed_everything=1", "--trainer.max_steps=6",
                     "--test_after_fit=false"]) == 0
    work = tmp_path / "work"
    work.mkdir()
    (work / "hpc_ckpt_1.ckpt").write_bytes(
        (foreign_dir / "logs/quickstart/version_0/checkpoints/last.ckpt").read_bytes())
    monkeypatch.chdir(work)
    sweep = load_sweep(write_sweep(tmp_path, f"""
        name: tiny
        config: {QUICKSTART}
        overrides: {{trainer.max_steps: 3, test_after_fit: false, trainer.enable_progress_bar: false,
                     views.figures: false}}
        grid: {{seed_everything: [0]}}
    """))
    [run] = sweep.runs(Path("logs"))
    write_run_files(sweep, run)
    task = subprocess.run([str(Path(sys.executable).with_name("lsl")), *run.fit_arguments()], cwd=work,
                          env={**os.environ, **SLURM_TASK}, capture_output=True, text=True, timeout=600)
    assert task.returncode == 0, task.stderr[-3000:]
    assert "Restored all states" not in task.stdout + task.stderr and "hpc_ckpt" not in task.stdout + task.stderr
    own = torch.load(work / run.directory / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert own["global_step"] == 3  # trained from scratch, not from the foreign run's 6 steps
    stolen = torch.load(work / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert stolen["global_step"] == 6
    assert not any(torch.equal(own["state_dict"][key], stolen["state_dict"][key]) for key in own["state_dict"]
                   if key.endswith("weight"))


def test_lsl_sweep_slurm_through_the_console_script(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    sweep_file = write_sweep(tmp_path, DISTILL_SWEEP)
    assert run_main(["sweep", "--config", str(sweep_file), "--slurm", "--gpus", "1"]) == 0
    assert "wrote 2 array job script(s) for 12 runs; submit with: bash logs/kd/slurm/submit.sh" in capsys.readouterr().out
    assert "--trainer.strategy" not in (tmp_path / "logs/kd/slurm/teacher.sbatch").read_text()
