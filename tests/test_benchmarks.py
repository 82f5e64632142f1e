"""The benchmark scripts run end to end (a few steps, so the numbers mean nothing: `slow` only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_throughput_prints_a_row_per_model_with_positive_speeds():
    out = run("throughput.py", "--device", "cpu", "--steps", "2", "--warmup", "1", "--rounds", "1", "--images", "512",
              "--paths", "lsl,hand,lightning")
    rows = re.findall(r"^\| (resnet32|smallcnn), \d+ steps \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|", out, re.MULTILINE)
    assert [row[0] for row in rows] == ["resnet32", "smallcnn"], out
    for _, lsl, hand, ratio in rows:
        assert float(lsl.replace(",", "")) > 0 and float(hand.replace(",", "")) > 0 and float(ratio) > 0
    # On a CPU, the split of each step into network time and the rest, per path.
    split = re.findall(r"^\| (resnet32|smallcnn), \d+ steps \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) \|$",
                       out, re.MULTILINE)
    assert [row[0] for row in split] == ["resnet32", "smallcnn"], out
    for _, *numbers in split:
        assert all(float(number) > 0 for number in numbers), numbers
    # The minimal LightningModule's rest of the step, and the differences it separates.
    three = re.findall(r"^\| (resnet32|smallcnn), \d+ steps \| ([\d.]+) / ([\d.]+) / ([\d.]+) \| (-?[\d.]+) \| (-?[\d.]+) \|$",
                       out, re.MULTILINE)
    assert [row[0] for row in three] == ["resnet32", "smallcnn"], out
    for _, lsl, lightning, hand, loop, own in three:
        assert float(loop) == pytest.approx(float(lightning) - float(hand), abs=0.011)
        assert float(own) == pytest.approx(float(lsl) - float(lightning), abs=0.011)


def test_distillation_epoch_benchmark_compares_three_runs():
    out = run("distill_epoch.py", "--epochs", "2", "--rounds", "1")
    for name in ("classifier", "student, cached teacher", "student, online teacher"):
        assert re.search(rf"^{re.escape(name)}\s+[\d.]+\s+[\d.]+x$", out, re.MULTILINE), out
