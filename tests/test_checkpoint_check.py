"""A checkpoint is what the user asked for: damaged files, other settings, `last` with no run, SLURM's hpc_ckpt,
and a resume that would train nothing are refused in one line; the opt-in continues with the new settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUICKSTART, QUIET, assert_clean_failure, flip_bytes_in_the_weights, run_main, scalars

from lsl.checkpoint_check import differences, hpc_checkpoint, read_checkpoint
from lsl.errors import ConfigError

TINY = [*QUIET, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--views.every_n_epochs=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One quick-start run of one short epoch (alpha 0.4, width 32), tested after fit; its run directory."""
    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert run_main(["fit", "--config", QUICKSTART, *TINY]) == 0
    return folder / "logs" / "quickstart" / "version_0"


@pytest.fixture
def workdir(trained: Path, tmp_path: Path, monkeypatch) -> Path:
    """A working directory holding a copy of the trained run, as logs/quickstart/version_0."""
    shutil.copytree(trained.parent.parent.parent, tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def runs(workdir: Path) -> list[str]:
    return sorted(path.name for path in (workdir / "logs" / "quickstart").iterdir())


def test_fit_refuses_to_resume_with_another_alpha_and_names_it(workdir: Path, capsys) -> None:
    checkpoint = "logs/quickstart/version_0/checkpoints/last.ckpt"
    assert run_main(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_epochs=2", "--ckpt_path", checkpoint,
                     "--model.init_args.loss.init_args.alpha=0.1"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "loss.init_args.alpha: 0.4 in the checkpoint, 0.1 now",
                         "--allow_changed_hparams=true", str(workdir / "logs/quickstart/version_0/config.yaml"))
    assert runs(workdir) == ["version_0"]  # no run directory for the refused run


def test_allow_changed_hparams_resumes_with_the_config_values(workdir: Path) -> None:
    checkpoint = "logs/quickstart/version_0/checkpoints/last.ckpt"
    assert run_main(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_epochs=2", "--ckpt_path", checkpoint,
                     "--model.init_args.loss.init_args.alpha=0.1", "--allow_changed_hparams=true"]) == 0
    hparams = yaml.safe_load((workdir / "logs/quickstart/version_1/hparams.yaml").read_text())
    assert hparams["loss"]["init_args"]["alpha"] == 0.1  # not the checkpoint's 0.4, which LightningCLI would put back
    resumed = torch.load(workdir / "logs/quickstart/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["hyper_parameters"]["loss"]["init_args"]["alpha"] == 0.1 and resumed["global_step"] == 4


def test_test_refuses_a_checkpoint_of_another_architecture(workdir: Path, capsys) -> None:
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", "last",
                     "--model.init_args.backbone.init_args.width=16"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "backbone.init_args.width: 32 in the checkpoint, 16 now")
    assert runs(workdir) == ["version_0"]


def test_test_refuses_a_checkpoint_trained_on_other_noisy_labels(workdir: Path, capsys) -> None:
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", "last", "--data.init_args.noise_seed=7"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "data.noise_seed: 0 in the checkpoint, 7 now")


def test_test_ckpt_path_last_tests_the_newest_run_and_refuses_without_one(workdir: Path, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", "last"]) == 0
    fitted, tested = scalars(workdir / "logs/quickstart/version_0"), scalars(workdir / "logs/quickstart/version_1")
    assert tested["test/acc"][-1] == pytest.approx(fitted["test/acc"][-1], abs=1e-6)  # the run's weights, not random

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", "last"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "ckpt_path='last'", str(Path("logs") / "quickstart"))
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("damage, named", [
    (lambda path: path.write_bytes(flip_bytes_in_the_weights(path.read_bytes())), "CRC-32"),
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "not a whole checkpoint"),
    (lambda path: path.write_bytes(b""), "not a whole checkpoint"),
    (lambda path: torch.save({"epoch": 3}, path), "no model weights"),
], ids=["flipped bytes", "truncated", "empty", "no weights"])
def test_a_damaged_checkpoint_is_refused_in_one_line(workdir: Path, damage, named, capsys) -> None:
    checkpoint = workdir / "damaged.ckpt"
    shutil.copy(workdir / "logs/quickstart/version_0/checkpoints/last.ckpt", checkpoint)
    damage(checkpoint)
    for subcommand in ("test", "fit"):
        assert run_main([subcommand, "--config", QUICKSTART, *TINY, "--ckpt_path", str(checkpoint)]) == 2
        error = capsys.readouterr().err
        assert_clean_failure(2, error, named, "damaged.ckpt")
        assert "weights_only" not in error
    assert runs(workdir) == ["version_0"]


def test_under_slurm_a_foreign_hpc_checkpoint_is_refused(workdir: Path, monkeypatch, capsys) -> None:
    # Lightning restores the newest hpc_ckpt_N.ckpt of its root folder (the working directory) under SLURM.
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "sweep", "SLURM_JOB_ID": "1", "SLURM_NODEID": "0",
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(name, value)
    shutil.copy(workdir / "logs/quickstart/version_0/checkpoints/last.ckpt", workdir / "hpc_ckpt_3.ckpt")
    assert hpc_checkpoint(workdir) == workdir / "hpc_ckpt_3.ckpt"
    assert run_main(["fit", "--config", QUICKSTART, *TINY, "--model.init_args.loss.init_args.alpha=0.2"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "hpc_ckpt_3.ckpt", "alpha: 0.4 in the checkpoint, 0.2 now")


def test_a_resume_that_would_train_nothing_is_refused_when_a_limit_asks_for_more(workdir: Path, capsys) -> None:
    # The run ended at max_epochs=1 (2 steps): raising only max_steps trains no step, since max_epochs binds.
    checkpoint = "logs/quickstart/version_0/checkpoints/last.ckpt"
    assert run_main(["fit", "--config", QUICKSTART, *TINY, "--trainer.max_steps=100", "--ckpt_path", checkpoint]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "max_steps=100", "max_epochs=1", "--trainer.max_epochs")
    assert runs(workdir) == ["version_0"]  # the new run's folder, which trained nothing, is gone
    # The same limits again: a finished run restarted, which only warns.
    assert run_main(["fit", "--config", QUICKSTART, *TINY, "--ckpt_path", "last", "--test_after_fit=false"]) == 0
    assert "nothing left to train" in capsys.readouterr().err


def test_differences_lists_every_changed_and_missing_key() -> None:
    saved = {"loss": {"init_args": {"alpha": 0.4}}, "width": 32, "_instantiator": "a"}
    assert differences(saved, {"loss": {"init_args": {"alpha": 0.4}}, "width": 32, "_instantiator": "b"}) == []
    assert differences(saved, {"loss": {"init_args": {"alpha": 0.1}}, "width": 16, "depth": 3}) == [
        "depth: '(unset)' in the checkpoint, 3 now", "loss.init_args.alpha: 0.4 in the checkpoint, 0.1 now",
        "width: 32 in the checkpoint, 16 now"]


def test_read_checkpoint_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
