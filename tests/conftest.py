"""Helpers shared by the test files: running ``lsl`` (console script and in process), reading a run's scalars,
tiny datasets written in the exact on-disk formats that lsl reads, and paths to the real data."""

from __future__ import annotations

import gzip
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICKSTART = str(CONFIGS / "quickstart.yaml")
# Most tests do not look at the figures, and drawing them (matplotlib) costs about a second per run; the views'
# tests and the runs that check the figures ask for them again with FIGURES.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--views.figures=false"]
FIGURES = ["--views.figures=true"]


def lsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    script = Path(sys.executable).with_name("lsl")
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar TensorBoard holds for a run folder, by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_clean_failure(exit_code: int, stderr: str, *fragments: str) -> None:
    """A user's mistake: exit status 2, one ``lsl: error:`` line naming ``fragments``, no traceback."""
    assert exit_code == 2, stderr
    assert "lsl: error:" in stderr and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def run_main(args: list[str]) -> int:
    """``lsl ARGS`` in this process; its exit status."""
    from lsl.cli import main

    try:
        main(args)
    except SystemExit as exit:
        return exit.code or 0
    return 0


def _cifar_pixels(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Rows of 3072 uint8 (channel-major), brightness tied to the label so a network can learn it."""
    base = (labels.astype(np.int64) * 255 // max(int(labels.max()), 1)).astype(np.int64)
    noise = rng.integers(-20, 21, size=(len(labels), 3072))
    return np.clip(base[:, None] + noise, 0, 255).astype(np.uint8)


def _pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file)


def write_cifar10(root: Path, per_batch: int = 40, test_size: int = 50) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and the meta file."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        labels = rng.integers(0, 10, per_batch)
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": labels.tolist(),
                                             "data": _cifar_pixels(rng, labels),
                                             "filenames": [f"{i}.png" for i in range(per_batch)]})
    labels = rng.integers(0, 10, test_size)
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(),
                                    "data": _cifar_pixels(rng, labels), "filenames": []})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                                      "num_vis": 3072})
    return root


def write_cifar100(root: Path, train_size: int = 300, test_size: int = 100) -> Path:
    """``root/cifar-100-python`` with ``train``, ``test`` and ``meta`` (fine and coarse labels)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, size in (("train", train_size), ("test", test_size)):
        fine = rng.integers(0, 100, size)
        _pickle(folder / name, {"filenames": [], "batch_label": name, "fine_labels": fine.tolist(),
                                "coarse_labels": (fine // 5).tolist(), "data": _cifar_pixels(rng, fine)})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return root


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, train_size: int = 200, test_size: int = 50, compressed: bool = True) -> Path:
    """The four idx files of Fashion-MNIST (``.gz`` as distributed, or raw) directly in ``folder``."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, size in (("train", train_size), ("t10k", test_size)):
        labels = rng.integers(0, 10, size).astype(np.uint8)
        images = np.clip(labels[:, None, None] * 25 + rng.integers(0, 30, (size, 28, 28)), 0, 255).astype(np.uint8)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            content = _idx_bytes(array)
            if compressed:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(content))
            else:
                (folder / stem).write_bytes(content)
    return folder


def flip_bytes_in_the_weights(data: bytes) -> bytes:
    """A checkpoint's bytes with 8 bytes inverted in the middle of its largest tensor record: the archive still
    opens and loads, with other weights. (Bytes in the middle of the file may be zip padding, which changes
    nothing: PyTorch aligns each record.)"""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    # The record's bytes follow its 30-byte local header, its name and its extra field (PyTorch pads there).
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    middle = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
    return data[:middle] + bytes(byte ^ 0xFF for byte in data[middle:middle + 8]) + data[middle + 8:]


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar10")


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "cifar100")


@pytest.fixture
def fashion_mnist_root(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fashion-mnist")
