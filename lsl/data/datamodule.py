"""The noisy-label data module: noisy training and validation splits, a clean test set, device-side transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lsl.data.augmentation import random_crop_flip
from lsl.data.batch import Batch
from lsl.data.dataset import NoisyDataset
from lsl.data.sources import ImageFolder, ImageSource, InMemorySource
from lsl.errors import ConfigError
from lsl.noise import NoiseModel, NoisyLabels, NoNoise, load_or_create_noisy_labels


class NoisyLabelDataModule(pl.LightningDataModule):
    """A dataset with noisy training labels, a noisy validation split and a clean test set.

    The noisy labels are drawn once by ``noise`` from ``noise_seed`` (separate from the training seed),
    saved as a checksummed artifact beside the data, and reused by every later run.
    ``val_fraction`` of the noisy training set is held out for model selection, so that selection never
    looks at the (clean) test set.

    ```yaml
    data:
      class_path: lsl.data.NoisyLabelDataModule
      init_args:
        dataset:
          class_path: lsl.data.CIFAR100
          init_args:
            root: data
        noise:
          class_path: lsl.noise.SymmetricNoise
          init_args:
            rate: 0.2
        noise_seed: 0
    ```

    Args:
        dataset: Where the images and clean labels come from.
        noise: How the training labels are corrupted; None keeps them clean.
        noise_seed: Seed of the label corruption (and of the validation split), not of training.
        val_fraction: Share of the noisy training set held out as the validation split (0 for none); one that
            rounds to no image, or to all of them, is a ConfigError.
        batch_size: Training batch size (per device).
        eval_batch_size: Batch size for validation, test and predict.
        num_workers: DataLoader worker processes (0 is fastest for the in-memory datasets).
        augment: Apply the dataset's standard augmentation to training batches.
        artifact_dir: Where noise artifacts live; default ``<dataset root>/noisy_labels``.
        train_subset: Train on this many images only: a fixed random subset of the training split (the
            same for every seed), drawn before the noise, for studies sized to a CPU. None uses them all; more
            than the split holds is a ConfigError.
        balanced_subset: Draw ``train_subset`` with the same number of images from every class (it must be a
            multiple of K); false draws it uniformly at random, so class counts vary a little.
        images_on_device: Keep an in-memory dataset (CIFAR, Fashion-MNIST, digits) on the accelerator, as
            uint8, and slice each batch there: no host-to-device copy per batch. It is the same data and the
            same augmentation either way. Ignored on a CPU, for ImageFolder data and with ``num_workers > 0``.
    """

    def __init__(
        self,
        dataset: ImageSource,
        noise: NoiseModel | None = None,
        noise_seed: int = 0,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        augment: bool = True,
        artifact_dir: str | None = None,
        train_subset: int | None = None,
        balanced_subset: bool = False,
        images_on_device: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1): it is the share held out for validation")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ConfigError(f"{name}={value} must be a positive number of samples")
        if train_subset is not None and train_subset < 1:
            raise ConfigError(f"train_subset={train_subset} must be a positive number of images, or null for all")
        if balanced_subset and train_subset is None:
            raise ConfigError("balanced_subset=true needs a train_subset (how many images to draw): give one, or "
                              "balanced_subset=false to train on every image")
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers} must be 0 or more")
        self.dataset = dataset
        self.noise = noise or NoNoise()
        self.noise_seed = noise_seed
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.artifact_dir = Path(artifact_dir) if artifact_dir else dataset.root / "noisy_labels"
        self.train_subset = train_subset
        self.balanced_subset = balanced_subset
        self.images_on_device = images_on_device
        self.noisy_labels: NoisyLabels | None = None
        self._normalisation: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self.train_set = self.val_set = self.test_set = None

    @property
    def num_classes(self) -> int:
        """K, linked by the CLI into the model so that it is never typed twice."""
        return self.dataset.num_classes

    @property
    def transition_matrix(self) -> np.ndarray:
        """The noise model's true T, ``T[i, j] = P(noisy = j | clean = i)``."""
        return self.noise.transition_matrix(self.num_classes)

    def prepare_data(self) -> None:
        # Runs before Lightning creates any run directory: missing data, sizes that do not fit the data or a
        # corrupted artifact stop here.
        self.dataset.prepare()
        _, clean, image_rows = self._training_split()
        self._validation_size(len(clean))
        self._load_noisy_labels(clean, image_rows)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and self.train_set is None:
            self._setup_train_and_val()
        if stage in ("test", "predict") and self.test_set is None:
            images, clean = self.dataset.load(train=False)
            self.test_set = NoisyDataset(images, clean, clean, np.arange(len(clean)))
        self._move_datasets(self._storage_device())

    def _move_datasets(self, device: torch.device) -> None:
        # The training and validation sets share one image tensor: copy it to the device once, not per set.
        moved: dict[int, Tensor] = {}
        for dataset in (self.train_set, self.val_set, self.test_set):
            if dataset is None or dataset.noisy.device == device:
                continue
            if isinstance(dataset.images, Tensor):
                key = id(dataset.images)
                if key not in moved:
                    moved[key] = dataset.images.to(device)
                dataset.images = moved[key]
            dataset.to(device)

    def _storage_device(self) -> torch.device:
        """Where the datasets' tensors live: the accelerator if ``images_on_device`` can apply, else the CPU."""
        on_device = (self.images_on_device and self.num_workers == 0 and self.trainer is not None
                     and isinstance(self.dataset, InMemorySource))
        return self.trainer.strategy.root_device if on_device else torch.device("cpu")

    def _setup_train_and_val(self) -> None:
        images, clean, image_rows = self._training_split(self.augment)
        noisy = self._load_noisy_labels(clean, image_rows).labels
        order = np.random.default_rng([self.noise_seed, 1]).permutation(len(clean))
        num_val = self._validation_size(len(clean))
        self.train_set = NoisyDataset(images, noisy, clean, np.sort(order[num_val:]), image_rows)
        if self.augment and not isinstance(self.dataset, InMemorySource):
            # A decoded source crops and flips while it reads (ImageFolder): validation reads the images plainly.
            images = self._training_split(augment=False)[0]
        self.val_set = NoisyDataset(images, noisy, clean, np.sort(order[:num_val]), image_rows) if num_val else None

    def _validation_size(self, num_images: int) -> int:
        """How many of the ``num_images`` training images are held out; ConfigError if that is all or none of
        them although ``val_fraction`` asked for some (no silent run without model selection)."""
        num_val = int(round(self.val_fraction * num_images))
        if num_val >= num_images:
            raise ConfigError(f"val_fraction={self.val_fraction} leaves no training images out of {num_images}: "
                              "give a smaller val_fraction")
        if num_val == 0 and self.val_fraction > 0:
            raise ConfigError(
                f"val_fraction={self.val_fraction} of {num_images} training images holds out none (it rounds to 0): "
                f"give val_fraction >= {0.5 / num_images:.3g} for a validation split, or 0 for none"
            )
        return num_val

    def unaugmented_training_samples(self) -> NoisyDataset:
        """Every sample of the training split (the validation part too), in index order, never augmented.

        Batches fetched from it still need :meth:`preprocess` with ``augment=False``.
        """
        images, clean, image_rows = self._training_split(augment=False)
        noisy = self._load_noisy_labels(clean, image_rows).labels
        return NoisyDataset(images, noisy, clean, np.arange(len(clean)), image_rows)

    def unaugmented_batches(self, dataset: NoisyDataset, device: torch.device,
                            positions: Tensor | None = None) -> Iterator[Batch]:
        """``dataset``'s samples (those at ``positions``, or all), in order, in batches of ``eval_batch_size``
        on ``device``, preprocessed without augmentation: for running a model over a split outside the loops."""
        positions = torch.arange(len(dataset)) if positions is None else torch.as_tensor(positions)
        for chunk in positions.split(self.eval_batch_size):
            batch = dataset.__getitems__(chunk.tolist())
            yield self.preprocess(Batch(*(field.to(device) for field in batch)), augment=False)

    def fingerprint(self) -> dict:
        """What identifies the training labels: the dataset (and subset), K, the noise and its artifact's sha256.

        A classifier records it in its checkpoints, so a distillation student can check that its teacher
        learnt from the same noisy labels.
        """
        noisy_labels = self._load_noisy_labels(*self._training_split()[1:])
        return {"dataset": self.data_name, "num_classes": self.num_classes, "noise": self.noise.spec(),
                "noise_seed": self.noise_seed, "noisy_labels_sha256": noisy_labels.sha256}

    @property
    def eval_transform(self) -> str:
        """The un-augmented transform of the training images, as text (part of the teacher-logit cache key)."""
        if isinstance(self.dataset, ImageFolder):
            return repr(self.dataset.transform(augment=False))
        return f"x / 255, normalised by mean {list(self.dataset.mean)}, std {list(self.dataset.std)}"

    def _training_split(self, augment: bool = False):
        """The training images, the clean labels of the samples used, and where each one's image is."""
        images, clean = self.dataset.load(train=True, augment=augment)
        if self.train_subset is not None and self.train_subset > len(clean):
            raise ConfigError(
                f"train_subset={self.train_subset} is more than the {len(clean)} training images of "
                f"{self.dataset.name}: give train_subset <= {len(clean)}, or null to train on all of them"
            )
        if self.balanced_subset:
            chosen = self._balanced_subset(clean)
        elif self.train_subset is None or self.train_subset == len(clean):
            return images, clean, np.arange(len(clean))
        else:
            chosen = np.sort(np.random.default_rng(0).permutation(len(clean))[: self.train_subset])
        return images, clean[chosen], chosen

    def _balanced_subset(self, clean: np.ndarray) -> np.ndarray:
        """``train_subset / K`` images of every class, a fixed draw (the same for every seed), in index order."""
        num_classes = self.num_classes
        per_class, remainder = divmod(self.train_subset, num_classes)
        if remainder:
            raise ConfigError(f"balanced_subset=true: train_subset={self.train_subset} is not a multiple of the "
                              f"{num_classes} classes: give {self.train_subset - remainder} or "
                              f"{self.train_subset - remainder + num_classes}")
        members = [np.flatnonzero(clean == k) for k in range(num_classes)]
        smallest = min(range(num_classes), key=lambda k: len(members[k]))
        if len(members[smallest]) < per_class:
            raise ConfigError(f"balanced_subset=true: train_subset={self.train_subset} needs {per_class} images of "
                              f"each class, and class {smallest} has {len(members[smallest])}: give train_subset <= "
                              f"{len(members[smallest]) * num_classes}")
        rng = np.random.default_rng(0)
        return np.sort(np.concatenate([rng.permutation(rows)[:per_class] for rows in members]))

    @property
    def data_name(self) -> str:
        """The training data's name: the dataset's, with the subset when there is one (``cifar10-balanced4500``);
        part of the noise artifact's file name and of the data fingerprint."""
        if self.train_subset is None:
            return self.dataset.name
        return f"{self.dataset.name}-{'balanced' if self.balanced_subset else 'subset'}{self.train_subset}"

    def _load_noisy_labels(self, clean: np.ndarray, image_rows: np.ndarray) -> NoisyLabels:
        if self.noisy_labels is None:
            # A subset's rows go to the noise model: human labels belong to particular images.
            self.noisy_labels = load_or_create_noisy_labels(
                self.noise, clean, self.num_classes, dataset=self.data_name, split="train",
                seed=self.noise_seed, directory=self.artifact_dir,
                rows=None if self.train_subset is None else image_rows,
            )
        return self.noisy_labels

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, self.eval_batch_size) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def _loader(self, dataset: NoisyDataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        on_host = dataset.noisy.device.type == "cpu"
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=_as_is,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=on_host and torch.cuda.is_available())

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        if batch.input.device == device:  # the in-memory path: skip Lightning's walk over the fields
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        training = self.trainer is not None and self.trainer.training
        return self.preprocess(batch, augment=self.augment and training)

    def preprocess(self, batch: Batch, augment: bool) -> Batch:
        """The device-side transform of a fetched batch: augmentation (if asked) and normalisation."""
        if batch.input.dtype != torch.uint8:  # already a float tensor (ImageFolder)
            return batch
        images = batch.input
        if augment:
            images = random_crop_flip(images, self.dataset.crop_padding, self.dataset.flip)
        return batch._replace(input=self._normalise(images))

    def _normalise(self, images: Tensor) -> Tensor:
        """uint8 images to (x / 255 - mean) / std, with the constants made once per device, not per batch.

        In place on the fresh float copy: no second float batch is allocated, as one out-of-place ``addcmul``
        would.
        """
        if images.device not in self._normalisation:
            mean = torch.tensor(self.dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
            self._normalisation[images.device] = ((1 / (255 * std)).to(images.device), (-mean / std).to(images.device))
        scale, shift = self._normalisation[images.device]
        return images.to(torch.float32).mul_(scale).add_(shift)


def _as_is(batch: Batch) -> Batch:
    return batch
