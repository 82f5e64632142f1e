"""The ``lsl`` command end to end: the real console script, every config, and bad input."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONFIGS,
    FIGURES,
    QUICKSTART,
    QUIET,
    assert_clean_failure,
    lsl,
    run_main,
    scalars,
    write_cifar10,
    write_cifar100,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lsl import Classifier, ForwardCorrection
from lsl.noise import SymmetricNoise

CLASSIFIER_METRICS = {
    "train/loss", "train/lr", "train/acc_noisy", "train/acc_clean", "train/memorised", "train/corrected",
    "train/logit_norm", "val/loss", "val/acc_noisy", "val/acc_clean", "val/nll", "val/logit_norm",
    "test/acc", "test/nll", "test/ece", "test/logit_norm",
}


# ------------------------------------------------------------------------------------- the console script


def test_quickstart_trains_logs_every_metric_and_tests_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    fit = lsl("fit", "--config", QUICKSTART, *QUIET, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]

    run = tmp_path / "logs" / "quickstart" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    logged = scalars(run)
    assert CLASSIFIER_METRICS <= set(logged)
    assert all(np.isfinite(values).all() for values in logged.values())
    assert len(logged["val/acc_clean"]) == 30  # one validation per epoch
    assert logged["test/acc"][-1] > 0.5  # it learnt: chance is 0.1, and 40% of the training labels are wrong
    assert len(list((tmp_path / "data" / "noisy_labels").glob("*.npy"))) == 1

    # The fit above went through the console script; testing its checkpoint in process saves a start-up.
    monkeypatch.chdir(tmp_path)
    last = str(run / "checkpoints" / "last.ckpt")
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", last]) == 0
    retested = scalars(tmp_path / "logs" / "quickstart" / "version_1")
    assert retested["test/acc"][-1] == pytest.approx(logged["test/acc"][-1], abs=1e-6)


def test_python_dash_m_lsl_is_the_same_command(tmp_path: Path) -> None:
    # The help of the command and of a subcommand: neither imports Lightning, so the check costs no start-up.
    for arguments, fragment in ((["--help"], "estimate-t"), (["sweep", "--help"], "--parallel")):
        module = subprocess.run([sys.executable, "-m", "lsl", *arguments], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        script = lsl(*arguments, cwd=tmp_path)
        assert module.returncode == script.returncode == 0, module.stderr[-3000:]
        assert module.stdout == script.stdout and fragment in module.stdout


@pytest.mark.parametrize("config, writer, folder", [
    ("ls_cifar100.yaml", write_cifar100, "cifar-100-python"),
    ("cifar10/bc.yaml", write_cifar10, "cifar-10-batches-py"),
])
def test_paper_config_trains_on_a_cifar_folder(tmp_path: Path, monkeypatch, config: str, writer, folder: str) -> None:
    writer(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", str(CONFIGS / config), "--trainer.max_steps=4", *QUIET,
                     "--trainer.log_every_n_steps=2"]) == 0
    run = next((tmp_path / "logs").glob("*/version_0"))
    assert {"train/loss", "test/acc", "test/ece"} <= set(scalars(run))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_missing_data_fails_with_where_it_looked_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code = run_main(["fit", "--config", str(CONFIGS / "ls_cifar100.yaml"), "--trainer.max_steps=20",
                     "--data.init_args.dataset.init_args.download=false"])
    assert_clean_failure(code, capsys.readouterr().err, str(Path("data") / "cifar-100-python"), "download: true")
    assert list(tmp_path.iterdir()) == []


def test_a_paper_config_downloads_missing_data_and_says_where_to_put_it_when_it_cannot(tmp_path: Path,
                                                                                        monkeypatch, capsys) -> None:
    from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

    asked = []

    def no_network(self, root, *args, download=False, **kwargs):
        asked.append((root, download))
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before it fetches
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(TorchvisionCIFAR100, "__init__", no_network)
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", str(CONFIGS / "ls_cifar100.yaml"), *QUIET, "--trainer.max_steps=1"]) == 2
    assert asked == [("data", True)]  # the paper configs download by default
    assert_clean_failure(2, capsys.readouterr().err, "could not download CIFAR100", "cifar-100-python.tar.gz",
                         str(Path("data") / "cifar-100-python"))
    assert list(tmp_path.iterdir()) == []  # the folder the failed download made is gone


# ------------------------------------------------------------------------------ every config, in process


# Sweep files are not `lsl fit` configs: test_sweep.py parses every run they expand to.
CONFIG_FILES = sorted(path.relative_to(CONFIGS) for path in CONFIGS.rglob("*.yaml") if path.parent.name != "sweeps")


@pytest.mark.parametrize("config", CONFIG_FILES, ids=str)
def test_every_config_parses(config: Path, capsys) -> None:
    # Hardware overlays only make sense stacked on an experiment.
    stack = ["-c", QUICKSTART] if config.parts[0] == "hardware" else []
    assert run_main(["fit", *stack, "-c", str(CONFIGS / config), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "class_path: lsl." in printed and "seed_everything" in printed


# ------------------------------------------------------------------------------------------ bad input


def _matrix_file(path: Path, matrix: np.ndarray) -> str:
    np.save(path, matrix)
    return str(path)


def _cifar_n_file(path: Path) -> str:
    torch.save({"clean_label": np.zeros(5, dtype=np.int64), "worse_label": np.zeros(5, dtype=np.int64)}, path)
    return str(path)


BAD_INPUT = {
    "noise rate 1.5": (lambda tmp: ["--data.init_args.noise.init_args.rate=1.5"], "rate=1.5"),
    "alpha 1": (lambda tmp: ["--model.init_args.loss.init_args.alpha=1.0"], "alpha=1.0"),
    "T rows not summing to 1": (
        lambda tmp: ["--data.init_args.noise=lsl.noise.MatrixNoise",
                     f"--data.init_args.noise.init_args.path={_matrix_file(tmp / 'T.npy', np.full((10, 10), 0.2))}"],
        "sums to 2"),
    "T of the wrong size": (
        lambda tmp: ["--data.init_args.noise=lsl.noise.MatrixNoise",
                     f"--data.init_args.noise.init_args.path={_matrix_file(tmp / 'T.npy', np.eye(3))}"],
        "10 classes"),
    "unknown CIFAR-N key": (
        lambda tmp: ["--data.init_args.noise=lsl.noise.HumanNoise",
                     f"--data.init_args.noise.init_args.path={_cifar_n_file(tmp / 'human.pt')}",
                     "--data.init_args.noise.init_args.key=aggre_labels"],
        "aggre_labels"),
    "negative batch size": (lambda tmp: ["--data.init_args.batch_size=-1"], "batch_size=-1"),
    "max_epochs 0": (lambda tmp: ["--trainer.max_epochs=0"], "max_epochs=0"),
    "negative max_epochs": (lambda tmp: ["--trainer.max_epochs=-3"], "max_epochs=-3"),
    "negative max_steps": (lambda tmp: ["--trainer.max_steps=-5"], "max_steps=-5"),
    "negative learning rate": (lambda tmp: ["--model.init_args.optimizer.init_args.lr=-0.1"], "learning rate"),
    "save_dir is a file": (lambda tmp: [f"--trainer.logger.init_args.save_dir={_file(tmp / 'plain')}"], "is a file"),
    "save_dir under a file": (
        lambda tmp: [f"--trainer.logger.init_args.save_dir={_file(tmp / 'plain')}/logs"], "is a file"),
    "empty config": (lambda tmp: ["--config", _file(tmp / "empty.yaml")], "is empty"),
    "config of a comment": (lambda tmp: ["--config", _file(tmp / "comment.yaml", "# nothing\n")], "is empty"),
    "config of a list": (lambda tmp: ["--config", _file(tmp / "list.yaml", "- 1\n- 2\n")], "not a mapping"),
}


def _file(path: Path, content: str = "") -> str:
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    overrides, expected = BAD_INPUT[case]
    extra = overrides(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, *extra]) == 2
    assert_clean_failure(2, capsys.readouterr().err, expected)
    assert set(tmp_path.iterdir()) == before  # no logs/, no data/noisy_labels


@pytest.mark.parametrize("argument", ["--optimizer=torch.optim.Adam", "--lr_scheduler=torch.optim.lr_scheduler.StepLR"])
def test_top_level_optimizer_and_scheduler_do_not_exist(argument: str, tmp_path: Path, monkeypatch, capsys) -> None:
    # LightningCLI's own would silently replace the model's optimizer and drop its schedule, while hparams.yaml
    # still named the old ones: the model's init_args are the one way to set them.
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, argument]) == 2
    assert argument.split("=")[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_noise_artifact_is_refused_not_regenerated(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.max_steps=1", "--test_after_fit=false"]) == 0
    artifact = next((tmp_path / "data" / "noisy_labels").glob("*.npy"))
    labels = np.load(artifact)
    labels[0] = (labels[0] + 1) % 10
    np.save(artifact, labels)
    runs_before = sorted((tmp_path / "logs" / "quickstart").iterdir())
    capsys.readouterr()

    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.max_steps=1"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, artifact.name, "checksum")
    assert np.array_equal(np.load(artifact), labels)  # left as it was, for the user to look at
    assert sorted((tmp_path / "logs" / "quickstart").iterdir()) == runs_before


# ---------------------------------------------------------------------------------------- determinism


def test_same_seeds_give_the_same_labels_and_metrics(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--config", QUICKSTART, *QUIET, "--trainer.max_epochs=2", "--trainer.deterministic=true"]
    for _ in range(2):
        assert run_main(["fit", *short]) == 0
    assert run_main(["fit", *short, "--seed_everything=1"]) == 0

    artifacts = list((tmp_path / "data" / "noisy_labels").glob("*.npy"))
    assert len(artifacts) == 1  # a new training seed reuses the noise artifact
    first, second, other_seed = (scalars(tmp_path / "logs" / "quickstart" / f"version_{i}") for i in range(3))
    assert first == second
    assert first["train/loss"] != other_seed["train/loss"]


def test_fit_also_tests_the_best_validation_checkpoint_as_test_best(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # The highest validation NLL is an early epoch, so the "best" checkpoint is surely not the final weights.
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.max_epochs=3", "--checkpoint.monitor=val/nll",
                     "--checkpoint.mode=max", "--checkpoint.save_top_k=1", "--checkpoint.filename=best"]) == 0
    run = tmp_path / "logs" / "quickstart" / "version_0"
    logged = scalars(run)
    best_epoch = int(np.argmax(logged["val/nll"]))
    assert best_epoch < 2 and logged["test_best/acc"][-1] != logged["test/acc"][-1]
    assert run_main(["test", "--config", QUICKSTART, *QUIET, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")]) == 0
    retested = scalars(tmp_path / "logs" / "quickstart" / "version_1")
    assert retested["test/acc"][-1] == pytest.approx(logged["test_best/acc"][-1], abs=1e-6)
    assert "test_best/acc" not in retested


def test_a_checkpoint_from_lsl_fit_loads_with_no_other_argument(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    # jsonargparse carries the quickstart's alpha over to the new loss class: unset it to link the data's T.
    overrides = ['--model.init_args.loss={"class_path": "lsl.losses.ForwardCorrection", "init_args": {"alpha": null}}',
                 "--trainer.max_steps=3", "--test_after_fit=false"]
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, *overrides]) == 0
    checkpoint = tmp_path / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"

    model = Classifier.load_from_checkpoint(checkpoint)

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())
    assert isinstance(model.loss, ForwardCorrection) and isinstance(model.hparams.noise, SymmetricNoise)
    expected = SymmetricNoise(0.4).transition_matrix(10)
    np.testing.assert_allclose(model.loss.transition_matrix.double().numpy(), expected, atol=1e-7)


def test_a_loss_matrix_of_the_wrong_size_fails_before_anything_is_written(tmp_path: Path, monkeypatch, capsys) -> None:
    np.save(tmp_path / "T.npy", np.eye(3))
    monkeypatch.chdir(tmp_path)
    loss = f'{{"class_path": "lsl.losses.ForwardCorrection", "init_args": {{"alpha": null, "path": "{tmp_path / "T.npy"}"}}}}'
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, f"--model.init_args.loss={loss}"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "3x3", "10 classes")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["T.npy"]


@pytest.mark.slow  # a DDP process group in a subprocess; the gather is tested fast in test_temperature_scaling.py
def test_ddp_with_one_process_logs_the_test_views(tmp_path: Path) -> None:
    # DDP's all_gather stacks a leading rank dimension even for one process (configs/hardware/ddp.yaml on a
    # one-GPU machine); the test views once read that block as if it were the gathered outputs.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = lsl("fit", "--config", QUICKSTART, *QUIET, *FIGURES, "--trainer.max_steps=5", "--trainer.strategy=ddp",
                 "--trainer.devices=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "logs" / "quickstart" / "version_0"
    assert "test/acc" in scalars(run) and "test/ece_scaled_oracle" in scalars(run)
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"views/test_reliability", "views/test_per_class_acc"} <= set(events.Tags()["images"])


def test_predict_writes_the_test_probabilities_into_its_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.max_epochs=2"]) == 0
    checkpoint = tmp_path / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    assert run_main(["predict", "--config", QUICKSTART, *QUIET, f"--ckpt_path={checkpoint}"]) == 0

    predicted = torch.load(tmp_path / "logs" / "quickstart" / "version_1" / "predictions.pt", weights_only=True)
    probabilities, index, target = predicted["probabilities"], predicted["index"], predicted["target"]
    assert probabilities.shape == (360, 10) and torch.equal(index, torch.arange(360))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(360))
    accuracy = (probabilities.argmax(dim=1) == target).float().mean().item()
    assert accuracy == pytest.approx(scalars(checkpoint.parents[1])["test/acc"][-1], abs=1e-6)


def test_step_metrics_logged_only_on_writing_steps_give_the_same_tensorboard_points(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    short = ["--config", QUICKSTART, *QUIET, "--trainer.max_steps=20", "--trainer.log_every_n_steps=3",
             "--trainer.deterministic=true", "--test_after_fit=false"]
    assert run_main(["fit", *short]) == 0
    monkeypatch.setattr(Classifier, "writes_step_metrics", lambda self: True)  # log every step, as Lightning's examples
    assert run_main(["fit", *short]) == 0
    runs = [EventAccumulator(str(tmp_path / "logs" / "quickstart" / f"version_{i}")) for i in range(2)]
    for events in runs:
        events.Reload()
    for tag in ("train/loss", "train/lr"):
        only_written, every_step = ([(e.step, e.value) for e in events.Scalars(tag)] for events in runs)
        assert [step for step, _ in only_written] == [2, 5, 8, 11, 14, 17]
        assert only_written == every_step


# ------------------------------------------------------------------------------- the host allocator

ALLOCATE_30_MIB = """
import ctypes, sys
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
if sys.argv[1] == "tuned":
    from lsl.allocator import tune_host_allocator
    assert tune_host_allocator()
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = Mallinfo2, ctypes.c_void_p
mapped_before = libc.mallinfo2().hblks
buffer = libc.malloc(30 << 20)
print(libc.mallinfo2().hblks - mapped_before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is glibc's")
def test_tuned_allocator_serves_activation_sized_buffers_from_the_heap():
    """glibc maps a 30 MiB buffer with its own mmap (page faults on every reuse); after tuning, the heap serves it."""
    def mapped_blocks(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", ALLOCATE_30_MIB, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    assert mapped_blocks("default") == 1
    assert mapped_blocks("tuned") == 0  # the script imports lsl.allocator alone: no Lightning start-up
    from lsl import allocator, cli
    assert cli.tune_host_allocator is allocator.tune_host_allocator  # also where docs/speed.md names it
