"""The paper's first claim, checked on a CPU-sized study: ``pytest -m slow`` (about 10 minutes on 2 cores).

Lukasik et al. (ICML 2020): label smoothing mitigates symmetric label noise, and it does so by shrinking
the logits, which slows the memorisation of the mislabelled samples. The Fashion-MNIST configs are sized
so that cross-entropy memorises (see their header); these tests train the CE and LS configs in full.
"""

from __future__ import annotations


import pytest
from conftest import CONFIGS, FASHION_MNIST_DEBIAN, QUIET, lsl, scalars

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fashion_mnist_runs(tmp_path_factory) -> dict[str, dict[str, list[float]]]:
    if not FASHION_MNIST_DEBIAN.is_dir():
        pytest.skip(f"{FASHION_MNIST_DEBIAN} absent: apt-get install dataset-fashion-mnist")
    workdir = tmp_path_factory.mktemp("fashion-mnist-study")
    runs = {}
    for method in ("ce", "ls"):
        result = lsl("fit", "--config", str(CONFIGS / "fashion_mnist" / f"{method}.yaml"), *QUIET, cwd=workdir)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[method] = scalars(workdir / "logs" / f"fashion_mnist_{method}" / "version_0")
    assert len(list((workdir / "data" / "noisy_labels").glob("*.npy"))) == 1  # both trained on the same labels
    return runs


def test_label_smoothing_beats_cross_entropy_on_the_clean_test_set(fashion_mnist_runs) -> None:
    ce, ls = fashion_mnist_runs["ce"], fashion_mnist_runs["ls"]
    assert ls["test/acc"][-1] > ce["test/acc"][-1] + 0.02


def test_label_smoothing_memorises_fewer_mislabelled_samples(fashion_mnist_runs) -> None:
    ce, ls = fashion_mnist_runs["ce"], fashion_mnist_runs["ls"]
    assert ls["train/memorised"][-1] < ce["train/memorised"][-1]
    assert ls["train/corrected"][-1] > ce["train/corrected"][-1]


def test_label_smoothing_shrinks_the_logits(fashion_mnist_runs) -> None:
    ce, ls = fashion_mnist_runs["ce"], fashion_mnist_runs["ls"]
    assert ls["test/logit_norm"][-1] < ce["test/logit_norm"][-1]
