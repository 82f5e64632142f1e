"""``lsl estimate-t``: estimate T from a checkpoint and write it with a JSON sidecar.

``lsl estimate-t --ckpt RUN.ckpt --config RUN/config.yaml --out T.npy`` runs a checkpoint over the
un-augmented noisy training set (or validation split), takes the anchor-point estimate of
:mod:`lsl.estimate.anchors`, and writes T with a sidecar saying where it came from;
``ForwardCorrection(path=...)`` and ``BackwardCorrection(path=...)`` read the ``.npy``.

torch and Lightning are imported only by the functions that run the model, so ``lsl estimate-t --help``
and a refused argument answer without them.
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np

from lsl.errors import ConfigError, warn
from lsl.estimate.anchors import DEFAULT_PERCENTILE, estimation_error, find_anchors, rows_at
from lsl.files import file_sha256, read_yaml, write_atomically
from lsl.noise import TRANSITION_CONVENTION, validate_transition_matrix

if TYPE_CHECKING:
    import jsonargparse
    import lightning.pytorch as pl
    import torch

    from lsl.data import NoisyDataset, NoisyLabelDataModule

SIDECAR_FORMAT = 1


def parser() -> jsonargparse.ArgumentParser:
    """The parser of ``lsl estimate-t``. Its ``--config`` is the *run's* config.yaml (the data to rebuild), as
    it always was, so a YAML file of these options is ``--options``; ``--print_config`` prints them."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lsl estimate-t", exit_on_error=False,
        description="Estimate the noise transition matrix T[i, j] = P(noisy = j | clean = i) from a trained "
                    "checkpoint with the anchor points of Patrini et al. (CVPR 2017). Writes T (.npy) and a "
                    ".json sidecar; ForwardCorrection/BackwardCorrection take the .npy as `path`.")
    parser.add_argument("--options", action=ActionConfigFile,
                        help="a YAML file of these options (--config is the run's config.yaml, not this file)")
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint of a model trained on the noisy labels "
                        "with cross-entropy, best from before it memorised them (the best val/acc_noisy epoch)")
    parser.add_argument("--config", required=True, type=Path, help="the run's config.yaml; its data section "
                        "rebuilds the noisy training set (relative paths are read from the working directory)")
    parser.add_argument("--out", required=True, type=Path, help="where to write T, a .npy file")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help="percentile of p(noisy = i | x) at which class i's anchor sits (100: the maximum)")
    parser.add_argument("--split", type=Literal["train", "val"], default="train",
                        help="train: the samples the model was trained on (Patrini et al.); val: the held-out "
                             "noisy validation split, which a model that memorised its training labels has not seen")
    parser.add_argument("--temperature", type=Literal["none", "val"], default="none",
                        help="none: the model's softmax as it is (Patrini et al.); val: first divide the logits by "
                             "the temperature fitted to the noisy labels of the held-out validation split "
                             "(lsl.temperature.fit_temperature_noisy). The anchors' rows are read as the noisy "
                             "posterior, and a network trained with cross-entropy is over-confident there, which "
                             "pulls the estimate towards I (docs/estimate-t.md)")
    parser.add_argument("--device", type=Optional[str], default=None,
                        help="torch device to run the model on (default: cuda where there is one, else cpu)")
    return parser


def estimate_t_command(argv: list[str]) -> None:
    """``lsl estimate-t``: estimate T from a checkpoint and write it with its sidecar."""
    options = parser().parse_args(argv)
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
    _check_same_labels(model, datamodule, options.ckpt, options.config)
    temperature = fit_noisy_temperature(model, datamodule, device) if options.temperature == "val" else 1.0
    probabilities, indices = predict_probabilities(model, datamodule, dataset, device, temperature)
    anchors, fallback = find_anchors(probabilities, options.percentile)
    matrix = validate_transition_matrix(rows_at(probabilities, anchors), datamodule.num_classes,
                                        source="the estimated transition matrix")
    sidecar = _sidecar(options, config, datamodule, model, matrix, indices[anchors], len(indices), temperature)
    if fallback:
        sidecar["anchor_fallback_classes"] = fallback
        sidecar["warnings"] = [_fallback_warning(fallback)]
        warn(_fallback_warning(fallback))
    sidecar_path = write_estimate(options.out, matrix, sidecar)
    _report(options.out, sidecar_path, sidecar)


# ------------------------------------------------------------------------------- running a checkpoint


def predict_probabilities(model: torch.nn.Module, datamodule: NoisyLabelDataModule, dataset: NoisyDataset,
                          device: torch.device, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The model's softmax outputs on ``dataset`` without augmentation (of the logits divided by
    ``temperature``), and the samples' indices, in order."""
    from lsl.inference import predict_logits
    from lsl.temperature import scaled_probabilities

    logits = predict_logits(model.to(device), datamodule, dataset, device=device)
    indices = dataset.indices.cpu().numpy()
    if temperature == 1.0:
        return logits.softmax(dim=1).cpu().numpy(), indices
    return scaled_probabilities(logits.cpu(), temperature), indices


def fit_noisy_temperature(model: torch.nn.Module, datamodule: NoisyLabelDataModule, device: torch.device) -> float:
    """The temperature that makes the model's softmax the best fit (NLL) to the noisy labels of the held-out
    validation split: calibrated to the noisy posterior the anchors read, on samples it was not trained on."""
    from lsl.inference import predict_logits
    from lsl.temperature import fit_temperature_noisy

    dataset = datamodule.val_set
    if dataset is None:
        raise ConfigError("--temperature val: the run has no validation split (val_fraction is 0) to fit it on; "
                          "use --temperature none")
    logits = predict_logits(model.to(device), datamodule, dataset, device=device)
    return fit_temperature_noisy(logits.cpu(), dataset.noisy.cpu())


def load_data_module(config_path: Path) -> tuple[NoisyLabelDataModule, dict[str, Any]]:
    """The run's data module, built from the ``data`` section of its ``config.yaml``, and the raw config."""
    from jsonargparse import ArgumentParser

    from lsl.data import NoisyLabelDataModule

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
    config = read_yaml(config_path, "config")
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise ConfigError(f"config {str(config_path)!r} has no data section: give the config.yaml that `lsl fit` wrote")
    return config


def load_model(checkpoint: Path, config: dict[str, Any], device: torch.device) -> pl.LightningModule:
    """The checkpoint's model, rebuilt by the class its config names (``lsl.Classifier`` by default)."""
    from lsl.checkpoint_check import read_checkpoint

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
    import lightning.pytorch as pl

    module_name, _, name = class_path.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"model class_path {class_path!r} does not import ({error}): is it on PYTHONPATH?") from error
    if not (isinstance(model_class, type) and issubclass(model_class, pl.LightningModule)):
        raise ConfigError(f"model class_path {class_path!r} is not a LightningModule")
    return model_class


def _device(name: str | None) -> torch.device:
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"--device {name!r} is not a torch device ({error}): use cpu, cuda or cuda:0") from error


def _split(datamodule: NoisyLabelDataModule, split: str) -> NoisyDataset:
    datamodule.augment = False  # ImageFolder decodes with its augmenting transform otherwise
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_set if split == "train" else datamodule.val_set
    if dataset is None:
        raise ConfigError("--split val: the run has no validation split (val_fraction is 0); use --split train")
    return dataset


def _check_same_labels(model: pl.LightningModule, datamodule: NoisyLabelDataModule, ckpt: Path,
                       config: Path) -> None:
    """The checkpoint records the noisy labels it learnt from (lsl fit does): they must be the config's."""
    from lsl.checkpoint_check import training_label_differences

    recorded = getattr(model, "data_fingerprint", None)
    if recorded is None:
        return
    ours = datamodule.fingerprint()
    if not training_label_differences(recorded, ours):
        return
    raise ConfigError(
        f"{str(ckpt)!r} learnt from other noisy labels (dataset {recorded.get('dataset')!r}, labels sha256 "
        f"{str(recorded.get('noisy_labels_sha256'))[:16]}...) than the data of {str(config)!r} (dataset "
        f"{ours['dataset']!r}, labels sha256 {ours['noisy_labels_sha256'][:16]}...): give the config.yaml of the "
        "run that wrote the checkpoint"
    )


def _warn_if_not_cross_entropy(model: pl.LightningModule) -> None:
    from lsl.losses import CrossEntropy

    loss = getattr(model, "loss", None)
    if loss is not None and not isinstance(loss, CrossEntropy):
        warn(f"the checkpoint was trained with {type(loss).__name__}, not cross-entropy: its outputs are not the "
             "noisy posterior, so the estimate is biased (label smoothing pulls T towards uniform rows)")


def _fallback_warning(fallback: list[int]) -> str:
    shown = ", ".join(map(str, fallback[:10])) + (f" and {len(fallback) - 10} more" if len(fallback) > 10 else "")
    return (f"no sample is predicted as class {shown}: the anchor of each was taken among all samples, so "
            f"those rows of T are unreliable (train the model longer, or estimate on more samples)")


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
    sidecar_bytes = (json.dumps(sidecar, indent=1) + "\n").encode()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically([(sidecar_path, lambda file: file.write(sidecar_bytes)),
                          (out, lambda file: np.save(file, matrix.astype("<f8"), allow_pickle=False))])
    except OSError as error:
        raise ConfigError(f"cannot write {str(out)!r} ({error.strerror or error}): give --out in a folder you can "
                          "write to") from error
    return sidecar_path


def _sidecar(options: Any, config: dict[str, Any], datamodule: NoisyLabelDataModule, model: pl.LightningModule,
             matrix: np.ndarray, anchors: np.ndarray, num_samples: int, temperature: float) -> dict[str, Any]:
    sidecar = {
        "format": SIDECAR_FORMAT,
        "transition_convention": TRANSITION_CONVENTION,
        "method": "anchor points (Patrini et al., CVPR 2017)",
        "percentile": options.percentile,
        "temperature": {"fit": options.temperature, "value": temperature},
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
          f"{data['num_samples']} {data['split']} samples"
          + (f", logits divided by t = {sidecar['temperature']['value']:.3f} fitted to the val split's noisy labels"
             if sidecar["temperature"]["fit"] == "val" else "") + f") and {sidecar_path}")
    if "error" in sidecar:
        error = sidecar["error"]
        print(f"error against the true T: mean |T_est - T| = {error['mean_abs_error']:.4f}, "
              f"max row L1 = {error['max_row_l1_error']:.4f}")
