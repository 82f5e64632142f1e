"""Image sources, the noisy-label data module and batch augmentation (lsl.data)."""

from __future__ import annotations

import gzip
import importlib
import pickle
import pydoc
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CONFIGS, FASHION_MNIST_DEBIAN, write_cifar10, write_fashion_mnist

from lsl.data import (
    CIFAR10,
    CIFAR100,
    Batch,
    Digits,
    FashionMNIST,
    ImageFolder,
    ImageSource,
    NoisyDataset,
    NoisyLabelDataModule,
    random_crop_flip,
)
from lsl.errors import ConfigError
from lsl.noise import HumanNoise, NoNoise, SymmetricNoise

DIGITS_N = 1797
DIGITS_TRAIN = 1437  # 1797 - ceil(0.2 * 1797)
DIGITS_TEST = 360


# ------------------------------------------------------------------------------ independent decoders


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as file:
        return pickle.load(file, encoding="latin1")


def _cifar_reference(folder: Path, names: tuple[str, ...], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows of 3072 bytes (R plane, G plane, B plane, each row-major 32x32) and the labels."""
    rows = np.concatenate([np.asarray(_unpickle(folder / name)["data"], dtype=np.uint8) for name in names])
    labels = np.concatenate([np.asarray(_unpickle(folder / name)[key]) for name in names])
    return rows, labels


def _check_cifar_images(images: torch.Tensor, rows: np.ndarray) -> None:
    """Every image equals its row read plane by plane, checked by flat index rather than by a reshape."""
    assert images.dtype == torch.uint8
    assert tuple(images.shape) == (len(rows), 3, 32, 32)
    array = images.numpy()
    rng = np.random.default_rng(0)
    for _ in range(200):
        i, c, y, x = rng.integers(len(rows)), rng.integers(3), rng.integers(32), rng.integers(32)
        assert array[i, c, y, x] == rows[i, c * 1024 + y * 32 + x]
    # and the whole thing, channel-major
    expected = np.stack([rows[:, c * 1024 : (c + 1) * 1024] for c in range(3)], axis=1).reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(array, expected)


def _read_idx_reference(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    assert zero == 0 and dtype_code == 0x08
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(shape)


def _digits_module(root: Path, **kwargs) -> NoisyLabelDataModule:
    options = dict(noise=SymmetricNoise(0.4), noise_seed=0, val_fraction=0.1, batch_size=64)
    options.update(kwargs)
    return NoisyLabelDataModule(dataset=Digits(root=str(root)), **options)


def _ready(module: NoisyLabelDataModule, *stages: str) -> NoisyLabelDataModule:
    module.prepare_data()
    for stage in stages or ("fit",):
        module.setup(stage)
    return module


@pytest.fixture(scope="module")
def digits_reference() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target.astype(np.int64)


# ------------------------------------------------------------------------------------------ the package

# Every name lsl.data exported when it was one module: importers and configs (class_path) use them.
LSL_DATA_NAMES = ("Batch", "CIFAR10", "CIFAR100", "DecodedImages", "Digits", "FashionMNIST", "ImageFolder",
                  "ImageSource", "InMemorySource", "NoisyDataset", "NoisyLabelDataModule", "fetch", "random_crop_flip")


def test_every_name_lsl_data_exported_still_imports_from_it() -> None:
    package = importlib.import_module("lsl.data")
    assert [name for name in LSL_DATA_NAMES if not hasattr(package, name)] == []
    assert sorted(package.__all__) == sorted(LSL_DATA_NAMES)
    assert all(issubclass(getattr(package, name), ImageSource)
               for name in ("CIFAR10", "CIFAR100", "Digits", "FashionMNIST", "ImageFolder", "InMemorySource"))


def test_every_lsl_data_path_in_the_configs_and_docs_resolves() -> None:
    repo = CONFIGS.parent
    texts = [path.read_text() for path in [*CONFIGS.rglob("*.yaml"), repo / "README.md", *(repo / "docs").rglob("*.md")]]
    named = {path for text in texts for path in re.findall(r"\blsl\.data(?:\.[A-Za-z_]\w*)+", text)}
    assert {"lsl.data.NoisyLabelDataModule", "lsl.data.CIFAR10", "lsl.data.FashionMNIST", "lsl.data.Digits"} <= named
    assert [path for path in sorted(named) if pydoc.locate(path) is None] == []


# ------------------------------------------------------------------------------------------ sources


def test_cifar10_loads_the_pickled_batches(cifar10_root: Path) -> None:
    source = CIFAR10(root=str(cifar10_root))
    source.prepare()
    folder = cifar10_root / "cifar-10-batches-py"
    for train, names in ((True, tuple(f"data_batch_{i}" for i in range(1, 6))), (False, ("test_batch",))):
        images, labels = source.load(train=train)
        rows, expected = _cifar_reference(folder, names, "labels")
        _check_cifar_images(images, rows)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, expected)
    assert len(source.load(train=True)[1]) == 5 * 40
    assert len(source.load(train=False)[1]) == 50
    assert source.num_classes == 10


def test_cifar100_uses_the_fine_labels(cifar100_root: Path) -> None:
    source = CIFAR100(root=str(cifar100_root))
    source.prepare()
    folder = cifar100_root / "cifar-100-python"
    for train, name, size in ((True, "train", 300), (False, "test", 100)):
        images, labels = source.load(train=train)
        rows, fine = _cifar_reference(folder, (name,), "fine_labels")
        _check_cifar_images(images, rows)
        assert labels.dtype == np.int64 and len(labels) == size
        np.testing.assert_array_equal(labels, fine)
        assert labels.max() >= 20  # would be < 20 had the coarse labels been read
    assert source.num_classes == 100


def test_source_decodes_once_and_keeps_the_split(cifar10_root: Path) -> None:
    source = CIFAR10(root=str(cifar10_root))
    images, labels = source.load(train=True)
    for path in (cifar10_root / "cifar-10-batches-py").iterdir():
        path.unlink()
    again_images, again_labels = source.load(train=True)
    assert again_images is images and again_labels is labels


@pytest.mark.parametrize("layout", ["gz-in-root", "raw-in-torchvision-folder"])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, layout: str) -> None:
    if layout == "gz-in-root":
        root = tmp_path / "fm"
        folder = write_fashion_mnist(root, compressed=True)
        suffix = ".gz"
    else:
        root = tmp_path / "tv"
        folder = write_fashion_mnist(root / "FashionMNIST" / "raw", compressed=False)
        suffix = ""
    source = FashionMNIST(root=str(root))
    source.prepare()
    for train, prefix, size in ((True, "train", 200), (False, "t10k", 50)):
        images, labels = source.load(train=train)
        expected_images = _read_idx_reference(folder / f"{prefix}-images-idx3-ubyte{suffix}")
        expected_labels = _read_idx_reference(folder / f"{prefix}-labels-idx1-ubyte{suffix}")
        assert images.dtype == torch.uint8 and tuple(images.shape) == (size, 1, 28, 28)
        np.testing.assert_array_equal(images[:, 0].numpy(), expected_images)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, expected_labels.astype(np.int64))
    assert source.num_classes == 10


def test_digits_split_is_stratified_complete_and_fixed(tmp_path: Path, digits_reference) -> None:
    all_images, all_labels = digits_reference
    source = Digits(root=str(tmp_path))
    train_images, train_labels = source.load(train=True)
    test_images, test_labels = source.load(train=False)
    assert train_images.dtype == torch.uint8 and tuple(train_images.shape) == (DIGITS_TRAIN, 1, 8, 8)
    assert tuple(test_images.shape) == (DIGITS_TEST, 1, 8, 8)
    assert train_labels.dtype == np.int64 and test_labels.dtype == np.int64
    assert len(train_labels) + len(test_labels) == DIGITS_N
    # Both splits hold all 10 classes, in the proportions of the full set (stratified: off by < 1 sample).
    full_counts = np.bincount(all_labels, minlength=10)
    test_counts = np.bincount(test_labels, minlength=10)
    assert (test_counts > 0).all() and (np.bincount(train_labels, minlength=10) > 0).all()
    assert np.all(np.abs(test_counts - 0.2 * full_counts) < 1.0)
    # Together the splits are exactly the (rescaled) data set: same multiset of (image, label) pairs.
    def samples(images, labels):
        return sorted(img.tobytes() + bytes([lab]) for img, lab in zip(images.reshape(len(labels), -1), labels))

    split_images = np.concatenate([train_images.numpy(), test_images.numpy()])[:, 0]
    split_labels = np.concatenate([train_labels, test_labels])
    assert samples(split_images, split_labels) == samples(all_images, all_labels)
    assert int(train_images.max()) == 255
    # A fresh instance (a different root even) gives the same split.
    other = Digits(root=str(tmp_path / "elsewhere"))
    assert torch.equal(other.load(train=True)[0], train_images)
    np.testing.assert_array_equal(other.load(train=False)[1], test_labels)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_digits_rejects_a_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match=f"test_fraction={fraction}"):
        Digits(test_fraction=fraction)


def test_real_fashion_mnist_from_debian() -> None:
    if not FASHION_MNIST_DEBIAN.is_dir():
        pytest.skip(f"{FASHION_MNIST_DEBIAN} is absent (Debian package dataset-fashion-mnist)")
    source = FashionMNIST(root=str(FASHION_MNIST_DEBIAN))
    source.prepare()
    train_images, train_labels = source.load(train=True)
    test_images, test_labels = source.load(train=False)
    assert tuple(train_images.shape) == (60000, 1, 28, 28) and train_images.dtype == torch.uint8
    assert tuple(test_images.shape) == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(train_labels, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test_labels, minlength=10), np.full(10, 1000))
    expected = _read_idx_reference(FASHION_MNIST_DEBIAN / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(test_labels, expected)
    # The documented mean/std are the data's own statistics.
    pixels = train_images.float() / 255
    assert pixels.mean().item() == pytest.approx(source.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(source.std[0], abs=1e-3)


# ---------------------------------------------------------------------------------- missing data


@pytest.mark.parametrize("cls, looked_for", [(CIFAR10, "cifar-10-batches-py/data_batch_1"),
                                             (CIFAR100, "cifar-100-python/train")])
def test_missing_cifar_names_the_path_and_the_fix(tmp_path: Path, cls, looked_for: str) -> None:
    source = cls(root=str(tmp_path / "nothing"), download=False)
    with pytest.raises(ConfigError) as info:
        source.prepare()
    message = str(info.value)
    assert str(tmp_path / "nothing" / looked_for) in message
    assert "download: true" in message


def test_partly_missing_cifar_names_the_missing_file(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ConfigError, match="download: true") as info:
        CIFAR10(root=str(cifar10_root)).prepare()
    assert str(cifar10_root / "cifar-10-batches-py" / "test_batch") in str(info.value)


def test_missing_fashion_mnist_names_both_folders(tmp_path: Path) -> None:
    root = tmp_path / "fm"
    write_fashion_mnist(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()  # three of the four files are not enough
    with pytest.raises(ConfigError) as info:
        FashionMNIST(root=str(root), download=False).prepare()
    message = str(info.value)
    assert str(root) in message and str(root / "FashionMNIST" / "raw") in message
    assert "download: true" in message


def test_data_module_stops_at_prepare_data_when_data_is_missing(tmp_path: Path) -> None:
    module = NoisyLabelDataModule(dataset=CIFAR10(root=str(tmp_path)), noise=SymmetricNoise(0.4))
    with pytest.raises(ConfigError, match="download: true"):
        module.prepare_data()
    assert not (tmp_path / "noisy_labels").exists()


def test_image_folder_without_its_val_split(tmp_path: Path) -> None:
    (tmp_path / "tree" / "train" / "a").mkdir(parents=True)
    source = ImageFolder(root=str(tmp_path / "tree"))
    with pytest.raises(ConfigError) as info:
        source.prepare()
    assert str(tmp_path / "tree" / "val") in str(info.value)
    with pytest.raises(ConfigError):
        source.num_classes


# ---------------------------------------------------------------------------------------- ImageFolder


CLASS_COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200)}


def _write_tree(root: Path, per_class: dict[str, int]) -> Path:
    from PIL import Image

    for split, count in per_class.items():
        for name, colour in CLASS_COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), colour).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_module_gives_float_batches(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "tree", {"train": 4, "val": 2})
    source = ImageFolder(root=str(root), image_size=32)
    assert source.num_classes == 3 and source.classes == ["ant", "bee", "cat"]
    module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), noise_seed=3,
                                         val_fraction=0.0, batch_size=4, eval_batch_size=6), "fit", "test")
    assert module.num_classes == 3
    train = next(iter(module.train_dataloader()))
    assert isinstance(train, Batch)
    assert train.input.dtype == torch.float32 and tuple(train.input.shape) == (4, 3, 32, 32)
    assert module.on_after_batch_transfer(train, 0) is train  # already float: left alone
    expected_clean = np.repeat(np.arange(3), 4)
    np.testing.assert_array_equal(train.clean_target.numpy(), expected_clean[train.index.numpy()])
    np.testing.assert_array_equal(module.train_set.noisy.numpy(), module.noisy_labels.labels)
    assert module.noisy_labels.path.parent == root / "noisy_labels"
    assert module.noisy_labels.path.name.startswith("imagefolder-tree-train-")
    # Evaluation: resize + centre crop of a solid image is that colour, normalised with ImageNet statistics.
    test = next(iter(module.test_dataloader()))
    assert tuple(test.input.shape) == (6, 3, 32, 32) and test.input.dtype == torch.float32
    assert torch.equal(test.noisy_target, test.clean_target) and not test.is_noisy.any()
    mean, std = torch.tensor(source.mean).view(3, 1, 1), torch.tensor(source.std).view(3, 1, 1)
    for image, label in zip(test.input, test.clean_target.tolist()):
        colour = torch.tensor(CLASS_COLOURS[source.classes[label]], dtype=torch.float32).view(3, 1, 1)
        torch.testing.assert_close(image, ((colour / 255 - mean) / std).expand(3, 32, 32), atol=1e-5, rtol=0)


def test_an_augmented_image_folder_validates_on_the_images_as_they_are(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in CLASS_COLOURS:
            (tmp_path / "tree" / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)  # texture: a crop changes the image
                Image.fromarray(pixels).save(tmp_path / "tree" / split / name / f"{i}.png")

    def val_images(augment: bool) -> list[torch.Tensor]:
        module = _ready(NoisyLabelDataModule(dataset=ImageFolder(root=str(tmp_path / "tree"), image_size=32),
                                             noise=SymmetricNoise(0.4), noise_seed=3, val_fraction=0.5,
                                             augment=augment, eval_batch_size=6), "fit")
        return [module.on_after_batch_transfer(batch, 0).input for batch in module.val_dataloader()]

    augmented_run, again, plain = val_images(True), val_images(True), val_images(False)
    # Random crops and flips would differ between two reads; validation must see the plain decode every time.
    for first, second, reference in zip(augmented_run, again, plain, strict=True):
        assert torch.equal(first, second) and torch.equal(first, reference)


def test_image_folder_test_labels_use_the_training_classes(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "tree"
    for split, names in (("train", ["ant", "bee", "cat"]), ("val", ["ant", "cat"])):
        for name in names:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 40), CLASS_COLOURS[name]).save(root / split / name / "0.png")
    source = ImageFolder(root=str(root), image_size=32)
    assert source.classes == ["ant", "bee", "cat"]
    np.testing.assert_array_equal(source.load(train=False)[1], [0, 2])


def test_image_folder_rejects_a_test_class_unknown_to_training(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "tree"
    for split, names in (("train", ["ant", "bee"]), ("val", ["ant", "cat"])):
        for name in names:
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 40), CLASS_COLOURS[name]).save(root / split / name / "0.png")
    with pytest.raises(ConfigError, match="cat"):
        ImageFolder(root=str(root), image_size=32).load(train=False)


def test_val_fraction_that_leaves_no_training_images_is_refused(tmp_path: Path) -> None:
    module = NoisyLabelDataModule(dataset=Digits(root=str(tmp_path)), val_fraction=0.9999)
    with pytest.raises(ConfigError, match="val_fraction=0.9999"):
        module.prepare_data()  # before Lightning writes a run directory
    with pytest.raises(ConfigError, match="val_fraction=0.9999"):
        module.setup("fit")


def test_image_folder_root_with_a_space_in_its_name(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "my tree", {"train": 2, "val": 1})
    module = NoisyLabelDataModule(dataset=ImageFolder(root=str(root), image_size=32), noise=SymmetricNoise(0.4),
                                  val_fraction=0.0)
    module.prepare_data()
    assert module.noisy_labels.path.parent == root / "noisy_labels" and module.noisy_labels.path.is_file()


# ------------------------------------------------------------------------------------ the data module


def test_batches_carry_inputs_targets_index_and_noise_flag(tmp_path: Path, digits_reference) -> None:
    module = _ready(_digits_module(tmp_path), "fit")
    images, clean = Digits(root=str(tmp_path / "other")).load(train=True)
    noisy = np.load(module.noisy_labels.path)
    seen = 0
    for batch in module.train_dataloader():
        assert isinstance(batch, Batch)
        assert batch.input.dtype == torch.uint8 and batch.input.shape[1:] == (1, 8, 8)
        for field in (batch.noisy_target, batch.clean_target, batch.index):
            assert field.dtype == torch.int64
        index = batch.index.numpy()
        assert torch.equal(batch.input, images[index])
        np.testing.assert_array_equal(batch.clean_target.numpy(), clean[index])
        np.testing.assert_array_equal(batch.noisy_target.numpy(), noisy[index])
        assert batch.is_noisy.dtype == torch.bool
        assert torch.equal(batch.is_noisy, batch.noisy_target != batch.clean_target)
        seen += batch.is_noisy.sum().item()
    assert seen > 0
    single = module.train_set[5]
    assert single.index.item() == module.train_set.indices[5].item()
    assert single.input.shape == (1, 8, 8) and single.is_noisy.item() == (single.noisy_target != single.clean_target)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 1 / 3])
def test_train_and_val_split_the_training_set(tmp_path: Path, fraction: float) -> None:
    module = _ready(_digits_module(tmp_path, val_fraction=fraction))
    train = module.train_set.indices.numpy()
    val = module.val_set.indices.numpy()
    assert len(val) == round(fraction * DIGITS_TRAIN)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(DIGITS_TRAIN))
    # The validation split keeps the noisy labels (model selection on noisy data), the test split does not.
    val_batch = next(iter(module.val_dataloader()))
    np.testing.assert_array_equal(val_batch.noisy_target.numpy(), module.noisy_labels.labels[val_batch.index.numpy()])
    assert module.val_set.noisy.ne(module.val_set.clean).any()


def test_no_validation_split_when_fraction_is_zero(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path, val_fraction=0.0), "fit", "validate")
    assert module.val_set is None
    assert module.val_dataloader() == []
    np.testing.assert_array_equal(module.train_set.indices.numpy(), np.arange(DIGITS_TRAIN))


def test_split_depends_on_noise_seed_only(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    first = _ready(_digits_module(tmp_path / "a", noise_seed=5))
    torch.manual_seed(2)
    np.random.seed(2)
    same = _ready(_digits_module(tmp_path / "b", noise_seed=5))
    other = _ready(_digits_module(tmp_path / "c", noise_seed=6))
    assert torch.equal(first.val_set.indices, same.val_set.indices)
    assert torch.equal(first.train_set.indices, same.train_set.indices)
    assert not torch.equal(first.val_set.indices, other.val_set.indices)


def test_noise_touches_the_training_split_only(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path, val_fraction=0.0), "fit", "test")
    assert len(module.test_set) == DIGITS_TEST
    test_index = []
    for batch in module.test_dataloader():
        assert torch.equal(batch.noisy_target, batch.clean_target)
        assert not batch.is_noisy.any()
        test_index.append(batch.index)
    np.testing.assert_array_equal(torch.cat(test_index).numpy(), np.arange(DIGITS_TEST))  # in order, not shuffled
    np.testing.assert_array_equal(module.test_set.clean.numpy(), Digits(root=str(tmp_path)).load(train=False)[1])
    # Realised flip rate on the 1437 training labels: 0.4 within 4 binomial standard deviations.
    rate = module.train_set.noisy.ne(module.train_set.clean).float().mean().item()
    assert abs(rate - 0.4) < 4 * np.sqrt(0.4 * 0.6 / DIGITS_TRAIN)
    # Symmetric flip noise: a flipped label is never the clean one and lands on every other class.
    flipped = module.train_set.noisy[module.train_set.noisy != module.train_set.clean]
    assert set(flipped.tolist()) == set(range(10))


def test_noisy_labels_come_from_the_artifact(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path, noise_seed=7, val_fraction=0.2), "fit")
    path = tmp_path / "noisy_labels" / "digits-train-symmetric-flip-0.4-seed7.npy"
    assert module.noisy_labels.path == path and path.is_file() and path.with_suffix(".json").is_file()
    on_disk = np.load(path)
    assert len(on_disk) == DIGITS_TRAIN
    for split in (module.train_set, module.val_set):
        np.testing.assert_array_equal(split.noisy.numpy(), on_disk[split.indices.numpy()])
    # The draw is the noise model's own, from noise_seed, on the clean training labels.
    clean = Digits(root=str(tmp_path)).load(train=True)[1]
    np.testing.assert_array_equal(on_disk, SymmetricNoise(0.4).corrupt(clean, 10, 7))
    # A second module reads the same file back instead of drawing again.
    mtime = path.stat().st_mtime_ns
    again = _ready(_digits_module(tmp_path, noise_seed=7, val_fraction=0.2), "fit")
    assert path.stat().st_mtime_ns == mtime
    assert torch.equal(again.train_set.noisy, module.train_set.noisy)


def test_artifact_dir_overrides_the_default(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path / "root", artifact_dir=str(tmp_path / "labels")))
    assert module.noisy_labels.path.parent == tmp_path / "labels" and module.noisy_labels.path.is_file()
    assert not (tmp_path / "root" / "noisy_labels").exists()


def test_noisy_labels_depend_on_noise_seed_not_on_global_seeds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    a = _ready(_digits_module(tmp_path / "a", noise_seed=11))
    torch.manual_seed(123)
    np.random.seed(123)
    b = _ready(_digits_module(tmp_path / "b", noise_seed=11))  # separate folders: drawn twice
    c = _ready(_digits_module(tmp_path / "c", noise_seed=12))
    np.testing.assert_array_equal(a.noisy_labels.labels, b.noisy_labels.labels)
    assert np.mean(a.noisy_labels.labels != c.noisy_labels.labels) > 0.2


def test_no_noise_keeps_the_labels_clean(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path, noise=None))
    assert isinstance(module.noise, NoNoise)
    assert torch.equal(module.train_set.noisy, module.train_set.clean)
    np.testing.assert_array_equal(module.transition_matrix, np.eye(10))


def test_num_classes_and_transition_matrix(cifar100_root: Path) -> None:
    module = NoisyLabelDataModule(dataset=CIFAR100(root=str(cifar100_root)), noise=SymmetricNoise(0.4))
    assert module.num_classes == 100
    T = np.asarray(module.transition_matrix)
    assert T.shape == (100, 100)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(T), 0.6)
    np.testing.assert_allclose(T[~np.eye(100, dtype=bool)], 0.4 / 99)
    _ready(module, "fit")
    assert module.noisy_labels.labels.max() < 100 and module.noisy_labels.metadata["num_classes"] == 100


@pytest.mark.parametrize("kwargs, named", [
    ({"val_fraction": 1.0}, "val_fraction=1.0"),
    ({"val_fraction": -0.1}, "val_fraction=-0.1"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"eval_batch_size": 0}, "eval_batch_size=0"),
    ({"num_workers": -1}, "num_workers=-1"),
])
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        NoisyLabelDataModule(dataset=Digits(root=str(tmp_path)), **kwargs)
    assert named in str(info.value)


def _normalised(images: torch.Tensor, source) -> torch.Tensor:
    mean = torch.tensor(source.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(source.std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((images.double() / 255 - mean) / std).float()


@pytest.mark.parametrize("augment", [True, False])
def test_batch_transfer_normalises_without_a_trainer(cifar10_root: Path, augment: bool) -> None:
    source = CIFAR10(root=str(cifar10_root))
    module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), batch_size=32, augment=augment))
    assert module.trainer is None
    batch = next(iter(module.train_dataloader()))
    out = module.on_after_batch_transfer(batch, 0)
    assert isinstance(out, Batch) and out.input.dtype == torch.float32
    torch.testing.assert_close(out.input, _normalised(batch.input, source), atol=1e-5, rtol=0)
    for name in ("noisy_target", "clean_target", "index", "is_noisy"):
        assert torch.equal(getattr(out, name), getattr(batch, name))
    assert batch.input.dtype == torch.uint8  # the input batch itself is not changed


def _is_crop_flip_of(out: torch.Tensor, images: torch.Tensor, padding: int, source) -> torch.Tensor:
    """For each image: whether ``out`` is the normalised zero-padded window at some offset, maybe mirrored."""
    height, width = images.shape[-2:]
    padded = _normalised(torch.nn.functional.pad(images, (padding,) * 4), source)
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)  # [B, C, 2p+1, 2p+1, H, W]
    target = out[:, :, None, None]
    plain = (windows - target).abs().amax(dim=(1, 4, 5)) < 1e-5
    mirrored = (windows.flip(-1) - target).abs().amax(dim=(1, 4, 5)) < 1e-5
    return (plain | mirrored).flatten(1).any(dim=1)


def test_batch_transfer_augments_only_while_training(cifar10_root: Path) -> None:
    source = CIFAR10(root=str(cifar10_root))
    module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), batch_size=64))
    batch = next(iter(module.train_dataloader()))
    plain = _normalised(batch.input, source)
    module.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    out = module.on_after_batch_transfer(batch, 0).input
    assert _is_crop_flip_of(out, batch.input, padding=4, source=source).all()
    moved = (out - plain).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert moved.sum() >= 48  # an image stays put with probability 1/162
    # Padding is black pixels (normalised afterwards), not zeros of the normalised image.
    assert (out == 0).sum() < (out == _normalised(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), source)).sum()
    module.trainer = SimpleNamespace(training=False)  # validation during fit, test, predict
    torch.testing.assert_close(module.on_after_batch_transfer(batch, 0).input, plain, atol=1e-5, rtol=0)
    module.augment = False
    module.trainer = SimpleNamespace(training=True)
    torch.testing.assert_close(module.on_after_batch_transfer(batch, 0).input, plain, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- random_crop_flip


def _position_images(batch: int, height: int, width: int) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 col + 1, channel 2 is 255: every pixel says where it came from."""
    rows = torch.arange(1, height + 1, dtype=torch.uint8).view(height, 1).expand(height, width)
    cols = torch.arange(1, width + 1, dtype=torch.uint8).view(1, width).expand(height, width)
    image = torch.stack([rows, cols, torch.full((height, width), 255, dtype=torch.uint8)])
    return image.unsqueeze(0).repeat(batch, 1, 1, 1)


def _decode_crops(out: torch.Tensor, images: torch.Tensor, padding: int):
    """Read (top, left, flipped) off each output, and check the output is exactly that window."""
    height, width = images.shape[-2:]
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    tops, lefts, flips = [], [], []
    i, j = height // 2, width // 2  # always an image pixel, not padding, for 2 * padding < size
    for k, o in enumerate(out.numpy().astype(np.int64)):
        top = o[0, i, j] - 1 + padding - i
        flipped = o[1, i, j] < o[1, i, j - 1]
        left = (o[1, i, j] - 1 + padding - (width - 1 - j)) if flipped else (o[1, i, j] - 1 + padding - j)
        expected = padded[k, :, top : top + height, left : left + width]
        np.testing.assert_array_equal(o, expected[..., ::-1] if flipped else expected)
        tops.append(top), lefts.append(left), flips.append(flipped)
    return np.array(tops), np.array(lefts), np.array(flips)


@pytest.mark.parametrize("height, width", [(32, 32), (20, 28)])
def test_random_crop_flip_takes_windows_of_the_padded_image(height: int, width: int) -> None:
    images = _position_images(2000, height, width)
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=4, flip=True, generator=generator)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    tops, lefts, flips = _decode_crops(out, images, padding=4)
    assert set(tops.tolist()) == set(range(9)) and set(lefts.tolist()) == set(range(9))
    assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / len(flips))
    # Offsets and coins are drawn per image, independently of each other.
    assert len(set(zip(tops.tolist(), lefts.tolist()))) == 81
    assert abs(np.corrcoef(tops, lefts)[0, 1]) < 0.1


def test_random_crop_flip_identity_and_flip_only() -> None:
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=0, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_crop_flip_is_seeded_by_its_generator() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(images, 4, True, torch.Generator().manual_seed(42))
    again = random_crop_flip(images, 4, True, torch.Generator().manual_seed(42))
    other = random_crop_flip(images, 4, True, torch.Generator().manual_seed(43))
    assert torch.equal(first, again) and not torch.equal(first, other)
    # Identical images in one batch come out differently: each gets its own offset.
    copies = random_crop_flip(images[:1].repeat(16, 1, 1, 1), 4, True, torch.Generator().manual_seed(0))
    assert len({tuple(c.flatten().tolist()) for c in copies}) > 1
    floats = random_crop_flip(images.float(), 4, True, torch.Generator().manual_seed(42))
    assert floats.dtype == torch.float32 and torch.equal(floats, first.float())


# ------------------------------------------------------------------------------------------ loaders


class _ReadCounter:
    """Images indexable by a tensor of rows, as :meth:`ImageSource.load` promises, recording each read's size."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.reads: list[int] = []

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        self.reads.append(len(rows))
        return self.images[rows]


class _CountedDigits(ImageSource):
    """scikit-learn's digits through the public ImageSource contract, its images behind a read counter."""

    name = "digits-counted"
    mean = Digits.mean
    std = Digits.std

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.digits = Digits(root)
        self.counters: dict[bool, _ReadCounter] = {}

    @property
    def num_classes(self) -> int:
        return 10

    def load(self, train: bool, augment: bool = False) -> tuple[_ReadCounter, np.ndarray]:
        images, labels = self.digits.load(train)
        return self.counters.setdefault(train, _ReadCounter(images)), labels


def test_loader_reads_the_images_once_per_batch(tmp_path: Path) -> None:
    batch_size = 100
    source = _CountedDigits(str(tmp_path))
    module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), val_fraction=0.1,
                                         batch_size=batch_size, eval_batch_size=50))
    size = len(module.train_set)
    assert size == DIGITS_TRAIN - 144
    reads = source.counters[True].reads
    assert reads == []  # setting up reads no image
    orders = []
    for _ in range(2):
        batches = list(module.train_dataloader())
        assert all(isinstance(b, Batch) for b in batches)
        sizes = [batch_size] * (size // batch_size) + [size % batch_size]
        assert [len(b.input) for b in batches] == sizes
        assert reads == sizes  # one read of the whole batch's rows, not one per sample
        reads.clear()
        indices = torch.cat([b.index for b in batches]).numpy()
        assert len(np.unique(indices)) == size  # each sample once per epoch
        np.testing.assert_array_equal(np.sort(indices), module.train_set.indices.numpy())
        images, _ = Digits(str(tmp_path / "reference")).load(train=True)
        assert torch.equal(torch.cat([b.input for b in batches]), images[torch.as_tensor(indices)])
        orders.append(indices)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    assert not np.array_equal(orders[0], np.sort(orders[0]))
    val_batches = list(module.val_dataloader())
    assert [len(b.input) for b in val_batches] == [50, 50, 44] and reads == [50, 50, 44]
    np.testing.assert_array_equal(torch.cat([b.index for b in val_batches]).numpy(), module.val_set.indices.numpy())


def test_unaugmented_batches_cover_the_split_in_order_normalised_and_never_augmented(cifar10_root: Path) -> None:
    """CIFAR-10, whose training batches are cropped and flipped: none of that here, even in a training loop."""
    source = CIFAR10(root=str(cifar10_root))
    module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), val_fraction=0.1,
                                         eval_batch_size=64, augment=True))
    samples = module.unaugmented_training_samples()
    assert isinstance(samples, NoisyDataset) and len(samples) == 200  # the validation part too
    np.testing.assert_array_equal(samples.indices.numpy(), np.arange(200))
    images, clean = CIFAR10(root=str(cifar10_root)).load(train=True)
    module.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    batches = list(module.unaugmented_batches(samples, torch.device("cpu")))
    assert [len(b.input) for b in batches] == [64, 64, 64, 8]
    assert all(b.input.dtype == torch.float32 for b in batches)
    inputs = torch.cat([b.input for b in batches])
    torch.testing.assert_close(inputs, _normalised(images, source), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(torch.cat([b.index for b in batches]).numpy(), np.arange(200))
    np.testing.assert_array_equal(torch.cat([b.clean_target for b in batches]).numpy(), clean)
    np.testing.assert_array_equal(torch.cat([b.noisy_target for b in batches]).numpy(), module.noisy_labels.labels)
    # Positions pick samples, in the order given, repeats included.
    (picked,) = module.unaugmented_batches(samples, torch.device("cpu"), positions=torch.tensor([150, 3, 5, 3]))
    assert picked.index.tolist() == [150, 3, 5, 3]
    torch.testing.assert_close(picked.input, inputs[[150, 3, 5, 3]], rtol=0, atol=0)


def _on_accelerator(module: NoisyLabelDataModule, device: str) -> NoisyLabelDataModule:
    """A stand-in for the trainer: only where its strategy keeps the model. 'meta' plays the accelerator:
    tensors there have shapes but no storage, so the move and the slicing are checked without a GPU."""
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), training=False)
    return module


def test_in_memory_images_move_to_the_accelerator_once_and_batches_are_sliced_there(tmp_path: Path) -> None:
    module = _ready(_on_accelerator(_digits_module(tmp_path), "meta"), "fit", "test")
    assert module.train_set.images is module.val_set.images  # one copy on the device, shared
    for dataset in (module.train_set, module.val_set, module.test_set):
        assert {tensor.device.type for tensor in (dataset.images, dataset.noisy, dataset.clean, dataset.indices,
                                                   dataset.image_rows)} == {"meta"}
    batch = next(iter(module.train_dataloader()))
    assert all(field.device.type == "meta" for field in batch) and batch.input.shape == (64, 1, 8, 8)
    assert not module.train_dataloader().pin_memory  # device tensors cannot be pinned


@pytest.mark.parametrize("options", [{"images_on_device": False}, {"num_workers": 1}])
def test_images_stay_on_the_host_when_asked_or_with_workers(tmp_path: Path, options: dict) -> None:
    module = _ready(_on_accelerator(_digits_module(tmp_path, **options), "meta"))
    assert module.train_set.images.device.type == "cpu" and module.train_set.noisy.device.type == "cpu"


def test_each_source_gets_its_own_augmentation(tmp_path: Path) -> None:
    """Fashion-MNIST: flips only (no crop), and none when ``flip=False``; Digits: no augmentation at all."""
    root = write_fashion_mnist(tmp_path / "fm")
    for source, may_flip in ((FashionMNIST(root=str(root)), True), (FashionMNIST(root=str(root), flip=False), False),
                             (Digits(root=str(tmp_path / "digits")), False)):
        module = _ready(NoisyLabelDataModule(dataset=source, noise=SymmetricNoise(0.4), batch_size=128,
                                             artifact_dir=str(tmp_path / "labels")))
        batch = next(iter(module.train_dataloader()))
        module.trainer = SimpleNamespace(training=True)
        torch.manual_seed(0)
        out = module.on_after_batch_transfer(batch, 0).input
        plain = _normalised(batch.input, source)
        same = (out - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
        mirrored = (out - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
        if may_flip:
            assert (same | mirrored).all() and 32 <= (mirrored & ~same).sum() <= 96
        else:
            assert same.all()


def test_train_subset_is_a_fixed_subset_drawn_before_the_noise(tmp_path: Path) -> None:
    images, clean = Digits(root=str(tmp_path / "reference")).load(train=True)
    module = _ready(_digits_module(tmp_path / "a", train_subset=300, val_fraction=0.1, batch_size=32))
    assert len(module.train_set) + len(module.val_set) == 300 and len(module.val_set) == 30
    assert len(module.noisy_labels.labels) == 300
    assert module.noisy_labels.path.name == "digits-subset300-train-symmetric-flip-0.4-seed0.npy"
    rows = torch.cat([module.train_set.image_rows, module.val_set.image_rows]).numpy()
    assert len(np.unique(rows)) == 300 and rows.min() >= 0 and rows.max() < DIGITS_TRAIN
    for batch in module.train_dataloader():
        assert batch.index.max() < 300
        row = module.train_set.image_rows[torch.searchsorted(module.train_set.indices, batch.index)]
        assert torch.equal(batch.input, images[row])
        np.testing.assert_array_equal(batch.clean_target.numpy(), clean[row.numpy()])
        np.testing.assert_array_equal(batch.noisy_target.numpy(), module.noisy_labels.labels[batch.index.numpy()])
    # The same images for another noise seed; other noisy labels.
    other = _ready(_digits_module(tmp_path / "b", train_subset=300, noise_seed=1))
    other_rows = torch.cat([other.train_set.image_rows, other.val_set.image_rows]).numpy()
    np.testing.assert_array_equal(np.sort(other_rows), np.sort(rows))
    assert not np.array_equal(other.noisy_labels.labels, module.noisy_labels.labels)
    # A subset as large as the split is the whole split, with the whole split's noisy labels.
    whole = _ready(_digits_module(tmp_path / "c", train_subset=DIGITS_TRAIN))
    plain = _ready(_digits_module(tmp_path / "d"))
    assert len(whole.train_set) + len(whole.val_set) == DIGITS_TRAIN
    assert torch.equal(whole.train_set.indices, plain.train_set.indices)
    np.testing.assert_array_equal(whole.noisy_labels.labels, plain.noisy_labels.labels)
    with pytest.raises(ConfigError, match="train_subset=0"):
        _digits_module(tmp_path, train_subset=0)


def test_a_balanced_subset_holds_as_many_images_of_every_class_and_is_fixed(tmp_path: Path) -> None:
    _, clean = Digits(root=str(tmp_path / "reference")).load(train=True)
    module = _ready(_digits_module(tmp_path / "a", train_subset=300, balanced_subset=True))
    rows = torch.cat([module.train_set.image_rows, module.val_set.image_rows]).numpy()
    assert len(np.unique(rows)) == 300 and np.bincount(clean[rows], minlength=10).tolist() == [30] * 10
    assert module.noisy_labels.path.name == "digits-balanced300-train-symmetric-flip-0.4-seed0.npy"
    assert module.fingerprint()["dataset"] == "digits-balanced300"
    # The same images for another noise seed; a random subset of that size is another set of images.
    other = _ready(_digits_module(tmp_path / "b", train_subset=300, balanced_subset=True, noise_seed=1))
    np.testing.assert_array_equal(np.sort(torch.cat([other.train_set.image_rows, other.val_set.image_rows]).numpy()),
                                  np.sort(rows))
    random = _ready(_digits_module(tmp_path / "c", train_subset=300))
    random_rows = torch.cat([random.train_set.image_rows, random.val_set.image_rows]).numpy()
    assert np.bincount(clean[random_rows], minlength=10).tolist() != [30] * 10
    assert random.data_name == "digits-subset300"


@pytest.mark.parametrize("options, fragment", [
    ({"train_subset": 305}, "train_subset=305 is not a multiple of the 10 classes: give 300 or 310"),
    ({"train_subset": 1430}, "needs 143 images of each class"),
    ({}, "balanced_subset=true needs a train_subset"),
])
def test_a_balanced_subset_that_cannot_be_drawn_is_refused(tmp_path: Path, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        _ready(_digits_module(tmp_path, balanced_subset=True, **options))
    assert not (tmp_path / "noisy_labels").exists()


def test_a_cifar10_subset_with_human_noise_takes_each_images_own_label(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "data")
    clean = CIFAR10(root=str(root)).load(train=True)[1]
    human = {"clean_label": clean, "worse_label": (clean + 1 + (np.arange(len(clean)) % 3 == 0)) % 10}
    torch.save(human, tmp_path / "CIFAR-10_human.pt")
    module = _ready(NoisyLabelDataModule(dataset=CIFAR10(root=str(root)),
                                         noise=HumanNoise(str(tmp_path / "CIFAR-10_human.pt")),
                                         train_subset=100, balanced_subset=True, val_fraction=0.1))
    for split in (module.train_set, module.val_set):
        rows = split.image_rows.numpy()
        np.testing.assert_array_equal(split.noisy.numpy(), human["worse_label"][rows])
        np.testing.assert_array_equal(split.clean.numpy(), clean[rows])


def test_train_subset_larger_than_the_data_is_refused_before_any_label_is_drawn(tmp_path: Path) -> None:
    module = _digits_module(tmp_path, train_subset=DIGITS_TRAIN + 5)
    with pytest.raises(ConfigError) as info:
        module.prepare_data()
    message = str(info.value)
    assert f"train_subset={DIGITS_TRAIN + 5}" in message and f"the {DIGITS_TRAIN} training images" in message
    assert "null" in message and "\n" not in message
    assert not (tmp_path / "noisy_labels").exists()


@pytest.mark.parametrize("val_fraction", [0.0001, 0.0003])
def test_a_val_fraction_that_holds_out_no_image_is_refused(tmp_path: Path, val_fraction: float) -> None:
    module = _digits_module(tmp_path, val_fraction=val_fraction)  # of 1,437 images: rounds to 0
    with pytest.raises(ConfigError, match=rf"val_fraction={val_fraction} of {DIGITS_TRAIN} training images holds "
                                          r"out none.*or 0 for none"):
        module.prepare_data()
    assert not (tmp_path / "noisy_labels").exists()


def test_a_val_fraction_that_holds_out_one_image_is_accepted(tmp_path: Path) -> None:
    module = _ready(_digits_module(tmp_path, val_fraction=0.5 / DIGITS_TRAIN + 1e-6))
    assert len(module.val_set) == 1 and len(module.train_set) == DIGITS_TRAIN - 1
