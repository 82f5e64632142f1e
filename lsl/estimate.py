"""Estimating the noise transition matrix T from a trained model: the anchor points of Patrini et al.

Patrini, Rozza, Menon, Nock and Qu, "Making deep neural networks robust to label noise: a loss correction
approach" (CVPR 2017). A model fitted to noisy labels with a proper loss (cross-entropy) estimates the noisy
posterior ``p(noisy | x) = T^T p(clean | x)``. At an anchor point of class i, a sample that is surely of
class i, this is row i of T. The anchor is the sample where ``p(noisy = i | x)`` is largest; taking the
97th percentile instead of the maximum drops outliers. T is row-stochastic,
``T[i, j] = P(noisy = j | clean = i)``, as in :mod:`lsl.noise`.

``lsl estimate-t --ckpt RUN.ckpt --config RUN/config.yaml --out T.npy`` runs a checkpoint over the
un-augmented noisy training set and writes T with a JSON sidecar; ``ForwardCorrection(path=...)`` and
``BackwardCorrection(path=...)`` read the ``.npy``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader, Dataset

from lsl.data import Batch, NoisyLabelDataModule
from lsl.files import file_sha256
from lsl.checkpoint_check import read_checkpoint
from lsl.errors import ConfigError, warn
from lsl.files import new_temporary_file as write_new_file
from lsl.losses import CrossEntropy
from lsl.noise import TRANSITION_CONVENTION, validate_transition_matrix

DEFAULT_PERCENTILE = 97.0
SIDECAR_FORMAT = 1


# ------------------------------------------------------------------------------------------- the estimator


def anchor_points(probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """The anchor sample of each class: where ``p(noisy = i | x)`` reaches its ``percentile``-th percentile
    among the samples predicted as class ``i`` (see :func:`find_anchors`, which also says which classes had
    to fall back to all samples).

    Args:
        probabilities: The model's softmax outputs on the noisy training set, shape ``[N, K]``.
        percentile: In (0, 100]; 100 takes the maximum (Patrini et al.'s plain anchor), 97 drops the top 3%
            as outliers.

    Returns:
        int64 ``[K]``: row ``i`` of ``probabilities`` is the anchor of class ``i``.
    """
    return find_anchors(probabilities, percentile)[0]


def find_anchors(probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> tuple[np.ndarray, list[int]]:
    """Each class's anchor, and the classes whose anchor had to be sought among all samples.

    Class ``i``'s anchor is the sample at the ``percentile``-th percentile of ``p(noisy = i | x)`` among the
    samples whose prediction (argmax) is ``i``. Over all samples (Patrini et al.'s code) the percentile fails
    when K is large: with K = 100 each class is about 1% of the data, so the 97th percentile of
    ``p(noisy = i | x)`` lands on a sample of another class. A class that no sample is predicted as falls back
    to all samples; it is listed in the second return value, and its row of T is unreliable.

    Returns:
        int64 ``[K]`` anchor rows, and the sorted list of classes that fell back to all samples.
    """
    probabilities = _check_probabilities(probabilities)
    if not 0.0 < percentile <= 100.0:
        raise ConfigError(f"percentile={percentile!r} is not in (0, 100]: use 97 to drop outliers, 100 for the maximum")
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    # One stable sort instead of K boolean masks: O(N log N), not O(N K), for ImageNet's K = 1000.
    order = np.argsort(predicted, kind="stable")
    boundaries = np.searchsorted(predicted[order], np.arange(num_classes + 1))
    anchors = np.empty(num_classes, dtype=np.int64)
    fallback: list[int] = []
    for cls in range(num_classes):
        candidates = order[boundaries[cls] : boundaries[cls + 1]]
        if candidates.size == 0:
            candidates = np.arange(len(probabilities))
            fallback.append(cls)
        scores = probabilities[candidates, cls]
        # method="higher" returns a value some candidate actually has, so that candidate is the anchor.
        threshold = np.percentile(scores, percentile, method="higher")
        anchors[cls] = candidates[np.abs(scores - threshold).argmin()]
    return anchors, fallback


def estimate_transition_matrix(
    probabilities: np.ndarray, percentile: float = DEFAULT_PERCENTILE
) -> tuple[np.ndarray, np.ndarray]:
    """Patrini et al.'s anchor-point estimate of T from a model's outputs on noisy training samples.

    Args:
        probabilities: Softmax outputs ``p(noisy | x)``, shape ``[N, K]``, of a model trained on the noisy
            labels with cross-entropy.
        percentile: Where the anchor of each class sits among the samples predicted as that class (see
            :func:`find_anchors`).

    Returns:
        The float64 row-stochastic ``[K, K]`` estimate (row i is the output at class i's anchor,
        renormalised) and the anchors' row indices ``[K]``.
    """
    anchors = anchor_points(probabilities, percentile)
    return rows_at(probabilities, anchors), anchors


def rows_at(probabilities: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The estimate of T from its anchors: row i is the float64 output at class i's anchor, renormalised."""
    rows = np.asarray(probabilities, dtype=np.float64)[anchors]
    return rows / rows.sum(axis=1, keepdims=True)


def estimation_error(estimated: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How far an estimate is from the true T: the mean absolute entry difference and the largest row L1 error."""
    difference = np.abs(np.asarray(estimated, dtype=np.float64) - np.asarray(true, dtype=np.float64))
    return {"mean_abs_error": float(difference.mean()), "max_row_l1_error": float(difference.sum(axis=1).max())}


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0 or probabilities.shape[1] < 2:
        raise ConfigError(
            f"probabilities of shape {probabilities.shape} cannot give a transition matrix: give the model's "
            "softmax outputs, one row of K >= 2 class probabilities per sample"
        )
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise ConfigError("probabilities have negative or non-finite entries: give softmax outputs, not logits")
    return probabilities


# ------------------------------------------------------------------------------- running a checkpoint


def predict_probabilities(
    model: torch.nn.Module, datamodule: NoisyLabelDataModule, dataset: Dataset, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """The model's softmax outputs on ``dataset`` without augmentation, and the samples' indices."""
    loader = DataLoader(dataset, batch_size=datamodule.eval_batch_size, collate_fn=_whole_batch,
                        num_workers=datamodule.num_workers)
    model.eval().to(device)
    outputs, indices = [], []
    with torch.inference_mode():
        for batch in loader:
            batch = datamodule.preprocess(Batch(*(field.to(device) for field in batch)), augment=False)
            outputs.append(model(batch.input).float().softmax(dim=1).cpu())
            indices.append(batch.index.cpu())
    return torch.cat(outputs).numpy(), torch.cat(indices).numpy()


def _whole_batch(batch: Batch) -> Batch:
    return batch


def load_data_module(config_path: Path) -> tuple[NoisyLabelDataModule, dict[str, Any]]:
    """The run's data module, built from the ``data`` section of its ``config.yaml``, and the raw config."""
    config = _read_config(config_path)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(NoisyLabelDataModule, "data", required=True)
    try:
        parsed = parser.parse_object({"data": config["data"]})
    except Exception as error:  # jsonargparse's ArgumentError, or a ConfigError raised by a class
        raise ConfigError(f"the data section of {str(config_path)!r} does not parse: {error}") from error
    try:
        return parser.instantiate_classes(parsed).data, config
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"cannot build the data of {str(config_path)!r}: {error}") from error


def _read_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        raise ConfigError(f"config {str(config_path)!r} does not exist: give the config.yaml of the run")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config {str(config_path)!r} is not valid YAML: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise ConfigError(f"config {str(config_path)!r} has no data section: give the config.yaml that `lsl fit` wrote")
    return config


def load_model(checkpoint: Path, config: dict[str, Any], device: torch.device) -> pl.LightningModule:
    """The checkpoint's model, rebuilt by the class its config names (``lsl.Classifier`` by default)."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {str(checkpoint)!r} does not exist: give a .ckpt written by `lsl fit`")
    read_checkpoint(checkpoint)  # whole, every record against its CRC-32: torch.load checks none of them
    model_class = _import_class(config.get("model", {}).get("class_path", "lsl.Classifier"))
    try:
        return model_class.load_from_checkpoint(checkpoint, map_location=device)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"cannot load {str(checkpoint)!r} as {model_class.__name__}: {type(error).__name__}: "
            f"{(str(error).strip().splitlines() or [''])[0][:300]}: give a .ckpt written by `lsl fit` with this config"
        ) from error


def _import_class(class_path: str) -> type[pl.LightningModule]:
    module_name, _, name = class_path.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"model class_path {class_path!r} does not import ({error}): is it on PYTHONPATH?") from error
    if not (isinstance(model_class, type) and issubclass(model_class, pl.LightningModule)):
        raise ConfigError(f"model class_path {class_path!r} is not a LightningModule")
    return model_class


# ----------------------------------------------------------------------------------------------- output


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any work: its folder (or the nearest existing folder
    above it, where the missing ones would be created) must be a writable directory, and neither ``out`` nor
    its sidecar may be a directory."""
    for target in (out, out.with_suffix(".json")):
        if target.is_dir():
            raise ConfigError(f"--out {str(out)!r}: {str(target)!r} is a directory: give a file name such as "
                              f"{str(target / 'T.npy')!r}")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {str(existing)!r} is a file, not a folder, so {str(out.parent)!r} "
                          "cannot be created: give --out in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: the folder {str(existing)!r} is not writable: give --out in a "
                          "folder you can write to")


def write_estimate(out: Path, matrix: np.ndarray, sidecar: dict[str, Any]) -> Path:
    """Write ``out`` (.npy) and its ``.json`` sidecar atomically, sidecar first; returns the sidecar's path.

    The files are created with mode ``0666 & ~umask``, like any other file. An OS error (an unwritable folder,
    a full disk) is a ConfigError, and leaves no temporary file behind.
    """
    sidecar_path = out.with_suffix(".json")
    temporaries: list[str] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sidecar_bytes = (json.dumps(sidecar, indent=1) + "\n").encode()
        temporaries.append(_temporary(out.parent, lambda file: file.write(sidecar_bytes)))
        temporaries.append(_temporary(out.parent, lambda file: np.save(file, matrix.astype("<f8"), allow_pickle=False)))
        os.replace(temporaries[0], sidecar_path)
        os.replace(temporaries[1], out)
    except OSError as error:
        raise ConfigError(f"cannot write {str(out)!r} ({error.strerror or error}): give --out in a folder you can "
                          "write to") from error
    finally:
        for leftover in temporaries:
            if os.path.exists(leftover):
                os.unlink(leftover)
    return sidecar_path


def _temporary(directory: Path, write: Callable[[Any], Any]) -> str:
    return write_new_file(directory, ".estimate-t.", write)


# ------------------------------------------------------------------------------------- the subcommand


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsl estimate-t",
        description="Estimate the noise transition matrix T[i, j] = P(noisy = j | clean = i) from a trained "
                    "checkpoint with the anchor points of Patrini et al. (CVPR 2017). Writes T (.npy) and a "
                    ".json sidecar; ForwardCorrection/BackwardCorrection take the .npy as `path`.")
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint of a model trained on the noisy labels "
                        "with cross-entropy, best from before it memorised them (the best val/acc_noisy epoch)")
    parser.add_argument("--config", required=True, type=Path, help="the run's config.yaml; its data section "
                        "rebuilds the noisy training set (relative paths are read from the working directory)")
    parser.add_argument("--out", required=True, type=Path, help="where to write T, a .npy file")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="percentile of p(noisy = i | x) at which class i's anchor sits (100: the maximum)")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="train: the samples the model was trained on (Patrini et al.); val: the held-out "
                             "noisy validation split, which a model that memorised its training labels has not seen")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to run the model on")
    return parser


def estimate_t_command(argv: list[str]) -> None:
    """``lsl estimate-t``: estimate T from a checkpoint and write it with its sidecar."""
    options = _parser().parse_args(argv)
    if options.out.suffix != ".npy":
        raise ConfigError(f"--out {str(options.out)!r} must end in .npy: T is written with numpy.save")
    if not 0.0 < options.percentile <= 100.0:
        raise ConfigError(f"--percentile {options.percentile!r} is not in (0, 100]: use 97, or 100 for the maximum")
    check_out_path(options.out)
    device = _device(options.device)
    datamodule, config = load_data_module(options.config)
    model = load_model(options.ckpt, config, device)
    _warn_if_not_cross_entropy(model)
    dataset = _split(datamodule, options.split)
    _check_same_labels(model, datamodule, options)
    probabilities, indices = predict_probabilities(model, datamodule, dataset, device)
    anchors, fallback = find_anchors(probabilities, options.percentile)
    matrix = validate_transition_matrix(rows_at(probabilities, anchors), datamodule.num_classes,
                                        source="the estimated transition matrix")
    sidecar = _sidecar(options, config, datamodule, model, matrix, indices[anchors], len(indices))
    if fallback:
        sidecar["anchor_fallback_classes"] = fallback
        sidecar["warnings"] = [_fallback_warning(fallback)]
        warn(_fallback_warning(fallback))
    sidecar_path = write_estimate(options.out, matrix, sidecar)
    _report(options.out, sidecar_path, sidecar)


def _fallback_warning(fallback: list[int]) -> str:
    shown = ", ".join(map(str, fallback[:10])) + (f" and {len(fallback) - 10} more" if len(fallback) > 10 else "")
    return (f"no sample is predicted as class {shown}: the anchor of each was taken among all samples, so "
            f"those rows of T are unreliable (train the model longer, or estimate on more samples)")


def _device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a torch device ({error}): use cpu, cuda or cuda:0") from error


def _split(datamodule: NoisyLabelDataModule, split: str) -> Dataset:
    datamodule.augment = False  # ImageFolder decodes with its augmenting transform otherwise
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_set if split == "train" else datamodule.val_set
    if dataset is None:
        raise ConfigError("--split val: the run has no validation split (val_fraction is 0); use --split train")
    return dataset


def _check_same_labels(model: pl.LightningModule, datamodule: NoisyLabelDataModule,
                       options: argparse.Namespace) -> None:
    """The checkpoint records the noisy labels it learnt from (lsl fit does): they must be the config's."""
    recorded = getattr(model, "data_fingerprint", None)
    if recorded is None:
        return
    ours = datamodule.fingerprint()
    if all(recorded.get(key) == ours[key] for key in ("dataset", "num_classes", "noisy_labels_sha256")):
        return
    raise ConfigError(
        f"{str(options.ckpt)!r} learnt from other noisy labels (dataset {recorded.get('dataset')!r}, labels sha256 "
        f"{str(recorded.get('noisy_labels_sha256'))[:16]}...) than the data of {str(options.config)!r} (dataset "
        f"{ours['dataset']!r}, labels sha256 {ours['noisy_labels_sha256'][:16]}...): give the config.yaml of the "
        "run that wrote the checkpoint"
    )


def _warn_if_not_cross_entropy(model: pl.LightningModule) -> None:
    loss = getattr(model, "loss", None)
    if loss is not None and not isinstance(loss, CrossEntropy):
        warn(f"the checkpoint was trained with {type(loss).__name__}, not cross-entropy: its outputs are not the "
             "noisy posterior, so the estimate is biased (label smoothing pulls T towards uniform rows)")


def _sidecar(options: argparse.Namespace, config: dict[str, Any], datamodule: NoisyLabelDataModule,
             model: pl.LightningModule, matrix: np.ndarray, anchors: np.ndarray, num_samples: int) -> dict[str, Any]:
    sidecar = {
        "format": SIDECAR_FORMAT,
        "transition_convention": TRANSITION_CONVENTION,
        "method": "anchor points (Patrini et al., CVPR 2017)",
        "percentile": options.percentile,
        "checkpoint": {"path": str(options.ckpt.resolve()), "sha256": file_sha256(options.ckpt)},
        "config": {"path": str(options.config.resolve()), "sha256": file_sha256(options.config)},
        "model_loss": type(getattr(model, "loss", None)).__name__,
        "data": _data_record(config, datamodule, options.split, num_samples),
        "anchor_sample_indices": anchors.tolist(),
        "transition_matrix": matrix.tolist(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    true = getattr(datamodule, "transition_matrix", None)
    if true is not None:
        sidecar["true_transition_matrix"] = np.asarray(true).tolist()
        sidecar["error"] = estimation_error(matrix, true)
    return sidecar


def _data_record(config: dict[str, Any], datamodule: NoisyLabelDataModule, split: str, num_samples: int) -> dict:
    record: dict[str, Any] = {"config": config["data"], "split": split, "num_samples": num_samples,
                              "num_classes": datamodule.num_classes}
    if datamodule.noisy_labels is not None:
        record["noisy_labels"] = {"path": str(datamodule.noisy_labels.path.resolve()),
                                  "sha256": datamodule.noisy_labels.sha256}
    return record


def _report(out: Path, sidecar_path: Path, sidecar: dict[str, Any]) -> None:
    size = len(sidecar["transition_matrix"])
    data = sidecar["data"]
    print(f"wrote {out} ({size}x{size}, anchors at the {sidecar['percentile']:g}th percentile of "
          f"{data['num_samples']} {data['split']} samples) and {sidecar_path}")
    if "error" in sidecar:
        error = sidecar["error"]
        print(f"error against the true T: mean |T_est - T| = {error['mean_abs_error']:.4f}, "
              f"max row L1 = {error['max_row_l1_error']:.4f}")
