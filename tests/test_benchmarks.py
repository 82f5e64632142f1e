"""The benchmark scripts run end to end (a few steps, so the numbers mean nothing: `slow` only)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
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


GPU_CHECK_PARTS = [
    "synthetic CIFAR-10 files",
    *(f"fit {run}, {precision}" for run in ("quickstart", "ResNet-32, CIFAR-10-shaped")
      for precision in ("fp32", "bf16-mixed", "fp16-mixed")),
    "throughput.py ResNet-32, bf16, channels_last: lsl vs hand loop",
    "64k-step estimate through lsl fit",
    *(f"{count} concurrent throughput.py --paths lsl" for count in (1, 2, 4, 8)),
    "fit ResNet-32 under ddp.yaml, 1 process",
    "fit ResNet-32 under ddp.yaml, 2 processes",
    "throughput.py ResNet-32, bf16, channels_last, compile: lsl vs hand loop",
]


def gpu_check_rows(record: str) -> dict[str, tuple[str, str]]:
    """part -> (status, result) from the record's table of parts."""
    rows = re.findall(r"^\| (.+?) \| (ok|FAILED[^|]*|skipped[^|]*) \| (.*?) \| [\d.]* \|$", record, re.MULTILINE)
    return {part: (status, result) for part, status, result in rows}


def part_row(rows: dict[str, tuple[str, str]], part: str) -> tuple[str, str]:
    matches = [row for name, row in rows.items() if name.startswith(part)]
    assert len(matches) == 1, (part, list(rows))
    return matches[0]


def test_gpu_check_smoke_runs_every_part_on_a_cpu(tmp_path: Path):
    # The check waits for a GPU that comes rarely; this keeps it from rotting meanwhile.
    out = tmp_path / "record" / "gpu_check.md"
    stdout = run("gpu_check.py", "--smoke", "--out", str(out))
    record = out.read_text()
    assert record in stdout  # printed at the end, for a run whose files may not come back
    rows = gpu_check_rows(record)
    for part in GPU_CHECK_PARTS:
        status, result = part_row(rows, part)
        assert status == "ok" and re.search(r"\d", result) or status.startswith("skipped: "), (part, status, result)
    # What a CPU can run, it must run: only CUDA-only or GPU-sized parts may be skipped.
    skipped = [part for part, (status, _) in rows.items() if status.startswith("skipped")]
    assert all("fp16" in part or "compile" in part or part.startswith(("4 ", "8 ")) or "2 processes" in part
               for part in skipped), skipped
    assert "images on cpu" in part_row(rows, "fit ResNet-32, CIFAR-10-shaped, bf16-mixed")[1]
    assert "| sweep runs per GPU |" in record
    assert (out.parent / "gpu_check_logs" / "fit-0.log").is_file()


def test_gpu_check_stops_within_its_budget_and_records_what_it_skipped(tmp_path: Path):
    out = tmp_path / "gpu_check.md"
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--budget", "30",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    # The cut-off, then ending the children: generous, since a loaded 2-core machine is slow to reap them (the
    # real check is that parts were skipped for lack of time, below).
    assert time.monotonic() - began < 30 + 30, result.stderr[-3000:]
    rows = gpu_check_rows(out.read_text())
    for part in GPU_CHECK_PARTS:
        part_row(rows, part)
    statuses = [status for status, _ in rows.values()]
    assert any(status.startswith("skipped: out of time") for status in statuses), statuses
    assert result.returncode == (1 if any(status.startswith("FAILED") for status in statuses) else 0)
