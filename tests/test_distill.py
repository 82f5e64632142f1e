"""lsl.distill.TeacherStudentModule: the loss by hand, a frozen teacher, the logit cache, data checks and
checkpoints (CPU, small CNNs, real Digits data)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from conftest import QUICKSTART, QUIET, assert_clean_failure, lsl, run_main, scalars
from torch.testing import assert_close

from lsl import TeacherStudentModule
from lsl.data import Batch, Digits, NoisyLabelDataModule
from lsl.distill import distillation_loss
from lsl.errors import ConfigError
from lsl.files import file_sha256
from lsl.losses import CrossEntropy, LabelSmoothing
from lsl.models import SmallCNN
from lsl.module import Classifier
from lsl.noise import SymmetricNoise

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*is an instance of `nn.Module` and is already saved.*"),
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
    pytest.mark.filterwarnings("ignore:.*The number of training batches.*"),
]

QUICKSTART_DISTILL = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_distill.yaml")
NOISE = SymmetricNoise(0.4)
TEACHER_NET = functools.partial(SmallCNN, width=8, hidden=32)
STUDENT_NET = functools.partial(SmallCNN, width=4, hidden=16)


# ------------------------------------------------------------------------------------------ helpers


def digits(root: Path, noise_seed: int = 0, augment: bool = True, artifact_dir: Path | None = None
           ) -> NoisyLabelDataModule:
    return NoisyLabelDataModule(dataset=Digits(root=str(root)), noise=NOISE, noise_seed=noise_seed, val_fraction=0.2,
                                batch_size=64, eval_batch_size=256, augment=augment,
                                artifact_dir=str(artifact_dir) if artifact_dir else None)


def trainer(tmp_path: Path | None = None, **options) -> pl.Trainer:
    options.setdefault("logger", False)
    return pl.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, default_root_dir=tmp_path, **options)


def student(teacher: Path, **options) -> TeacherStudentModule:
    options.setdefault("backbone", STUDENT_NET)
    options.setdefault("optimizer", functools.partial(torch.optim.SGD, lr=0.05))
    options.setdefault("scheduler", None)
    return TeacherStudentModule(teacher_checkpoint=str(teacher), num_classes=10, noise=NOISE, **options)


def kl_by_hand(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> float:
    """tau^2 * mean over rows of sum_j p_t log(p_t / p_s), in float64 numpy."""
    def softmax(logits):
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    p_teacher = softmax(teacher_logits.double().numpy() / tau)
    p_student = softmax(student_logits.double().numpy() / tau)
    return tau**2 * float(np.mean(np.sum(p_teacher * np.log(p_teacher / p_student), axis=1)))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """A label-smoothed teacher fitted 12 steps on noisy Digits: its checkpoint and the data root."""
    tmp_path = tmp_path_factory.mktemp("teacher")
    pl.seed_everything(0, verbose=False)
    teacher = Classifier(backbone=TEACHER_NET, loss=LabelSmoothing(0.3), num_classes=10, noise=NOISE,
                         optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), scheduler=None)
    fit = trainer(tmp_path, max_steps=12, limit_val_batches=0)
    fit.fit(teacher, datamodule=digits(tmp_path / "digits"))
    path = tmp_path / "teacher.ckpt"
    fit.save_checkpoint(path)
    return path, tmp_path / "digits"


def first_unaugmented_batch(data: NoisyLabelDataModule) -> Batch:
    return data.preprocess(next(iter(data.train_dataloader())), augment=False)


# -------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_distillation_loss_is_tau_squared_kl_from_teacher_to_student(tau):
    generator = torch.Generator().manual_seed(1)
    student_logits, teacher_logits = 3 * torch.randn(2, 16, 7, generator=generator)
    loss = distillation_loss(student_logits, teacher_logits, tau)
    assert loss.item() == pytest.approx(kl_by_hand(student_logits, teacher_logits, tau), rel=1e-5)
    # KL(p_t || p_s), not KL(p_s || p_t): the direction matters once the logits differ.
    assert loss.item() != pytest.approx(kl_by_hand(teacher_logits, student_logits, tau), rel=1e-3)
    assert distillation_loss(teacher_logits, teacher_logits, tau).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kd_weight", [1.0, 0.3, 0.0])
def test_training_loss_mixes_distillation_and_the_task_loss(teacher_run, kd_weight):
    path, root = teacher_run
    model = student(path, kd_weight=kd_weight, temperature=2.0, loss=LabelSmoothing(0.2))
    data = digits(root)
    data.prepare_data()
    data.setup("fit")
    batch = first_unaugmented_batch(data)
    logits = model(batch.input)
    with torch.no_grad():
        teacher_logits = model.teacher.model(batch.input)
    expected_kd = kl_by_hand(logits.detach(), teacher_logits, 2.0)
    expected_task = F.cross_entropy(logits.detach(), batch.noisy_target, label_smoothing=0.2).item()
    loss = model.training_loss(logits, batch)
    assert loss.item() == pytest.approx(kd_weight * expected_kd + (1 - kd_weight) * expected_task, rel=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"temperature": -1.0}, "temperature=-1.0"),
    ({"temperature": math.nan}, "temperature=nan"),
    ({"kd_weight": 1.5}, "kd_weight=1.5"),
    ({"kd_weight": -0.1}, "kd_weight=-0.1"),
])
def test_bad_hyperparameters_are_config_errors_naming_the_value(teacher_run, options, message):
    with pytest.raises(ConfigError, match=message):
        student(teacher_run[0], **options)


def test_missing_or_foreign_teacher_checkpoints_are_config_errors(teacher_run, tmp_path):
    with pytest.raises(ConfigError, match="teacher_checkpoint=.*does not exist"):
        student(tmp_path / "nowhere.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a classifier checkpoint"):
        student(tmp_path / "junk.ckpt")
    with pytest.raises(ConfigError, match="predicts 10 classes, the student's data has 5"):
        TeacherStudentModule(teacher_checkpoint=str(teacher_run[0]), backbone=STUDENT_NET, num_classes=5)


# ------------------------------------------------------------------------------- the frozen teacher


class RecordTeacher(pl.Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append(pl_module.teacher.training)


def test_teacher_stays_frozen_in_eval_mode_and_out_of_the_student(teacher_run, tmp_path):
    path, root = teacher_run
    model = student(path)
    teacher_before = {name: value.clone() for name, value in model.teacher.model.state_dict().items()}
    student_before = {name: value.clone() for name, value in model.state_dict().items()}
    record = RecordTeacher()
    # Validation in between: Lightning switches the student to eval and back to train around it.
    trainer(tmp_path, max_steps=8, val_check_interval=3, limit_val_batches=1, callbacks=[record]).fit(
        model, datamodule=digits(root))

    assert len(record.modes) == 8 and not any(record.modes)
    assert all(not parameter.requires_grad for parameter in model.teacher.model.parameters())
    for name, value in model.teacher.model.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert any(not torch.equal(value, student_before[name]) for name, value in model.state_dict().items())
    assert not any(name.startswith("teacher") for name in model.state_dict())
    teacher_parameters = {id(parameter) for parameter in model.teacher.model.parameters()}
    assert not teacher_parameters & {id(parameter) for parameter in model.parameters()}


def test_teacher_accuracy_is_logged_once(teacher_run, tmp_path):
    path, root = teacher_run
    logger = CSVLogger(tmp_path, name="student")
    data = digits(root)
    trainer(tmp_path, max_steps=2, limit_val_batches=0, logger=logger).fit(student(path), datamodule=data)
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, row.split(","))) for row in rows[1:]]
    teacher_rows = [row for row in logged if row["teacher/test_acc"]]
    assert len(teacher_rows) == 1

    teacher = Classifier.load_from_checkpoint(path, weights_only=False).eval()
    data.setup("test")
    test = data.preprocess(data.test_set.__getitems__(list(range(len(data.test_set)))), augment=False)
    with torch.no_grad():
        test_acc = (teacher(test.input).argmax(dim=1) == test.clean_target).float().mean().item()
        train = data.preprocess(data.train_set.__getitems__(list(range(len(data.train_set)))), augment=False)
        predictions = teacher(train.input).argmax(dim=1)
    assert float(teacher_rows[0]["teacher/test_acc"]) == pytest.approx(test_acc, abs=1e-6)
    assert float(teacher_rows[0]["teacher/train_acc_noisy"]) == pytest.approx(
        (predictions == train.noisy_target).float().mean().item(), abs=1e-6)
    assert float(teacher_rows[0]["teacher/train_acc_clean"]) == pytest.approx(
        (predictions == train.clean_target).float().mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------------- the cache


def test_cached_and_online_teachers_give_the_same_loss_on_an_unaugmented_batch(teacher_run, tmp_path):
    path, root = teacher_run
    pl.seed_everything(0, verbose=False)
    cached, online = student(path, cache_teacher_logits=True), student(path)
    online.load_state_dict(cached.state_dict())
    data = digits(root, augment=False)
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(cached, datamodule=data)

    online.load_state_dict(cached.state_dict())
    batch = first_unaugmented_batch(data)
    logits = cached(batch.input).detach()
    assert cached.cached_teacher_logits.dtype == torch.float16
    assert cached.cached_teacher_logits.shape == (len(Digits(root=str(root)).load(train=True)[1]), 10)
    assert_close(cached.teacher_logits(batch), online.teacher_logits(batch), atol=1e-2, rtol=2e-3)
    cached_losses, online_losses = cached.distillation_losses(logits, batch), online.distillation_losses(logits, batch)
    assert_close(cached_losses["loss"], online_losses["loss"], atol=1e-4, rtol=1e-3)
    assert_close(cached_losses["task_loss"], online_losses["task_loss"], atol=0, rtol=0)


def test_cache_is_reused_for_the_same_key_and_rebuilt_for_another_teacher(teacher_run, tmp_path):
    path, root = teacher_run
    teacher_passes: list[tuple[int, bool]] = []  # (images, teacher in training mode) per teacher forward

    def fit(teacher: Path) -> TeacherStudentModule:
        model = student(teacher, cache_teacher_logits=True)
        model.teacher.model.register_forward_hook(
            lambda module, inputs, output: teacher_passes.append((len(inputs[0]), module.training)))
        data = digits(root, artifact_dir=tmp_path / "artifacts")  # a cache of its own, not the other tests'
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, datamodule=data)
        return model

    def images_through_the_teacher() -> int:
        assert not any(training for _, training in teacher_passes)  # un-augmented, in eval mode
        seen = sum(images for images, _ in teacher_passes)
        teacher_passes.clear()
        return seen

    test_size = len(Digits(root=str(root)).load(train=False)[1])
    cache_dir = tmp_path / "artifacts" / "teacher_logits"
    first = fit(path)
    files = sorted(cache_dir.glob("*.pt"))
    training_size = first.cached_teacher_logits.shape[0]
    assert len(files) == 1 and training_size == len(Digits(root=str(root)).load(train=True)[1])
    # The training set once (for the cache) and the test set once (the teacher's accuracy); no training step.
    assert images_through_the_teacher() == training_size + test_size
    stamp = files[0].stat().st_mtime_ns
    second = fit(path)
    assert torch.equal(first.cached_teacher_logits, second.cached_teacher_logits)
    assert files[0].stat().st_mtime_ns == stamp
    assert images_through_the_teacher() == test_size  # only the teacher's test-set accuracy, not the training set

    other = tmp_path / "other-teacher.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["state_dict"] = {name: value * 0.5 if value.is_floating_point() else value
                                for name, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, other)
    fit(other)
    assert len(sorted(cache_dir.glob("*.pt"))) == 2
    assert images_through_the_teacher() == training_size + test_size

    files[0].write_bytes(b"truncated")  # a damaged cache is recomputed, never trusted
    assert torch.equal(fit(path).cached_teacher_logits, first.cached_teacher_logits)
    assert images_through_the_teacher() == training_size + test_size


# -------------------------------------------------------------------------------- data and checkpoints


def test_teacher_from_other_noisy_labels_is_rejected_unless_allowed(teacher_run, tmp_path):
    path, root = teacher_run
    with pytest.raises(ConfigError, match=r"other noisy labels.*noise_seed: teacher 0, student 1.*noisy_labels_sha256"):
        trainer(tmp_path, max_steps=1).fit(student(path), datamodule=digits(root, noise_seed=1))
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(
        student(path, allow_teacher_data_mismatch=True), datamodule=digits(root, noise_seed=1))


def test_teacher_without_a_data_record_is_rejected_unless_allowed(teacher_run, tmp_path):
    path, root = teacher_run
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["lsl_data"]
    bare = tmp_path / "bare.ckpt"
    torch.save(checkpoint, bare)
    with pytest.raises(ConfigError, match="does not record the data it learnt from"):
        trainer(tmp_path, max_steps=1).fit(student(bare), datamodule=digits(root))


def test_student_round_trips_through_load_from_checkpoint_and_names_its_teacher(teacher_run, tmp_path):
    path, root = teacher_run
    model = student(path, temperature=3.0, kd_weight=0.5, loss=CrossEntropy())
    data = digits(root)
    fit = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    fit.fit(model, datamodule=data)
    saved = tmp_path / "student.ckpt"
    fit.save_checkpoint(saved)

    checkpoint = torch.load(saved, weights_only=False)
    assert checkpoint["lsl_teacher"] == {"path": str(path.resolve()), "sha256": file_sha256(path)}
    assert not any("teacher" in name for name in checkpoint["state_dict"])
    loaded = TeacherStudentModule.load_from_checkpoint(saved, weights_only=False)
    assert (loaded.temperature, loaded.kd_weight) == (3.0, 0.5)
    assert loaded.recorded_teacher == checkpoint["lsl_teacher"]
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[name], loaded_state[name]) for name in state)
    batch = first_unaugmented_batch(data)
    with torch.no_grad():
        assert torch.equal(model.eval()(batch.input), loaded.eval()(batch.input))


# --------------------------------------------------------------------------------------- through lsl


@pytest.mark.slow  # two trainings through the console script; the in-process tests above cover each stage
def test_two_stage_pipeline_through_the_console_script(tmp_path):

    teacher = lsl("fit", "--config", QUICKSTART, "--trainer.max_epochs=2", *QUIET, cwd=tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    teacher_checkpoint = tmp_path / "logs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    student = lsl("fit", "--config", QUICKSTART_DISTILL, "--trainer.max_epochs=2", *QUIET,
                  "--model.teacher_checkpoint", str(teacher_checkpoint), cwd=tmp_path)
    assert student.returncode == 0, student.stderr[-3000:]

    run = tmp_path / "logs" / "quickstart_distill" / "version_0"
    logged = scalars(run)
    assert {"train/kd_loss", "train/task_loss", "train/loss", "train/memorised", "val/acc_clean", "test/acc",
            "test/ece", "teacher/train_acc_noisy", "teacher/train_acc_clean", "teacher/test_acc"} <= set(logged)
    assert logged["train/kd_loss"] == logged["train/loss"]  # kd_weight 1.0: the teacher only
    # Written by lsl fit, the student's checkpoint loads without unpickling code, and names its teacher.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["lsl_teacher"] == {"path": str(teacher_checkpoint), "sha256": file_sha256(teacher_checkpoint)}
    assert checkpoint["lsl_data"]["dataset"] == "digits"

    test = lsl("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
               *QUIET, cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert scalars(tmp_path / "logs" / "quickstart_distill" / "version_1")["test/acc"] == logged["test/acc"]

    # The checkpoint alone rebuilds the student, its teacher and its settings: no argument but the file.
    loaded = TeacherStudentModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (loaded.temperature, loaded.kd_weight, loaded.hparams.num_classes) == (1.0, 1.0, 10)
    assert loaded.teacher.sha256 == file_sha256(teacher_checkpoint)
    assert loaded.recorded_teacher == checkpoint["lsl_teacher"]
    weights = loaded.state_dict()
    assert weights.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(weights[name], value) for name, value in checkpoint["state_dict"].items())


def test_cli_rejects_a_missing_or_mismatched_teacher_cleanly(teacher_run, tmp_path, monkeypatch, capsys):

    monkeypatch.chdir(tmp_path)
    missing = run_main(["fit", "-c", QUICKSTART_DISTILL, *QUIET, "--model.teacher_checkpoint", "no/such.ckpt"])
    assert_clean_failure(missing, capsys.readouterr().err, "teacher_checkpoint='no/such.ckpt' does not exist")
    # The module-scoped teacher learnt from noise_seed 0 on its own Digits copy; this student uses seed 1.
    mismatched = run_main(["fit", "-c", QUICKSTART_DISTILL, *QUIET, "--model.teacher_checkpoint", str(teacher_run[0]),
                           "--data.init_args.noise_seed=1"])
    assert_clean_failure(mismatched, capsys.readouterr().err, "learnt from other noisy labels",
                         "noise_seed: teacher 0, student 1", "allow_teacher_data_mismatch")
    assert not (tmp_path / "logs").exists()
