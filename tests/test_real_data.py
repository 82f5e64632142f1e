"""Real data: Debian's Fashion-MNIST, and CIFAR-10 with its CIFAR-10N human labels rebuilt from ../shared.

Each test skips cleanly where its data is absent (the project never depends on ../shared); CI has both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, FASHION_MNIST_DEBIAN, QUIET, SHARED, lsl, scalars

from lsl.data import CIFAR10, NoisyLabelDataModule
from lsl.noise import HumanNoise, realised_flip_rate

CIFAR10_TOOL = SHARED / "tools" / "cifar10_from_jpg.py"
CIFAR10_N = SHARED / "data" / "cifar-n" / "CIFAR-10_human.pt"


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory) -> Path:
    if not (CIFAR10_TOOL.is_file() and CIFAR10_N.is_file()):
        pytest.skip(f"CIFAR-10 JPEGs or CIFAR-10N labels not found under {SHARED}")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(CIFAR10_TOOL), str(root)], check=True, capture_output=True, timeout=300)
    return root


@pytest.mark.slow  # two epochs on 3,000 real images
def test_fashion_mnist_config_trains_on_the_real_data(tmp_path: Path) -> None:
    if not FASHION_MNIST_DEBIAN.is_dir():
        pytest.skip(f"{FASHION_MNIST_DEBIAN} absent: apt-get install dataset-fashion-mnist")
    result = lsl("fit", "--config", str(CONFIGS / "fashion_mnist" / "ls.yaml"), *QUIET, "--trainer.max_epochs=2",
                 "--data.init_args.train_subset=3000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(tmp_path / "logs" / "fashion_mnist_ls" / "version_0")
    assert logged["test/acc"][-1] > 0.3  # 10 classes, 2 short epochs, 40% of the 2,700 training labels wrong


@pytest.mark.slow  # rebuilds CIFAR-10's 60,000 images from JPEG first
def test_cifar10n_human_labels_line_up_with_the_rebuilt_cifar10(cifar10_root: Path, tmp_path: Path) -> None:
    module = NoisyLabelDataModule(CIFAR10(root=str(cifar10_root)), HumanNoise(str(CIFAR10_N), key="worse_label"),
                                  artifact_dir=str(tmp_path))
    module.prepare_data()  # refuses labels that do not match the training set's clean labels
    clean = module.dataset.load(train=True)[1]
    assert len(clean) == 50_000 and np.bincount(clean).tolist() == [5000] * 10
    assert realised_flip_rate(clean, module.noisy_labels.labels) == pytest.approx(0.4021, abs=5e-4)


@pytest.mark.slow  # a minute: the end-of-fit diagnostic runs ResNet-32 over all 45,000 training images
def test_cifar10_paper_config_runs_on_the_rebuilt_cifar10(cifar10_root: Path, tmp_path: Path) -> None:
    result = lsl("fit", "--config", str(CONFIGS / "cifar10" / "ls.yaml"), *QUIET, "--trainer.max_steps=3",
                 f"--data.init_args.dataset.init_args.root={cifar10_root}", "--trainer.limit_val_batches=1",
                 "--trainer.limit_test_batches=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = scalars(tmp_path / "logs" / "cifar10_ls" / "version_0")
    assert {"train/acc_noisy", "train/memorised", "test/acc", "test/ece"} <= set(logged)
    sidecar = json.loads((cifar10_root / "noisy_labels" / "cifar10-train-symmetric-flip-0.2-seed0.json").read_text())
    assert sidecar["num_samples"] == 50_000 and sidecar["realised_rate"] == pytest.approx(0.2, abs=0.005)
