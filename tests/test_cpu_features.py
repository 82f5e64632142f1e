"""bf16 autocast on a CPU without bf16 instructions: read from the CPU flags, and said before a run starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QUICKSTART, QUIET, run_main
from lightning.pytorch.accelerators import CPUAccelerator

import lsl.cli
from lsl.cli import bf16_emulated
from lsl.cpu_features import cpu_has_bf16

# Abridged /proc/cpuinfo of the machines lsl was measured on, and of an aarch64 one.
ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n\n" * 2
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V2 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 i8mm bf16\nCPU implementer\t: 0x41\n"
NEOVERSE_N1 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [(ZEN3, False), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V2, True),
                                                   (NEOVERSE_N1, False), ("processor\t: 0\n", None)])
def test_bf16_instructions_are_read_from_the_cpu_flags(cpuinfo: str, expected: bool | None, tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_bf16(path) is expected


def test_no_cpuinfo_means_unknown_not_missing(tmp_path: Path) -> None:
    assert cpu_has_bf16(tmp_path / "absent") is None


@pytest.mark.parametrize(("has_bf16", "precision", "accelerator", "expected"), [
    (False, "bf16-mixed", "cpu", True),
    (False, "bf16-true", CPUAccelerator(), True),
    (False, "32-true", "cpu", False),
    (True, "bf16-mixed", "cpu", False),
    (None, "bf16-mixed", "cpu", False),  # unknown (not Linux): no claim is made
    (False, "bf16-mixed", "gpu", False),
])
def test_bf16_is_emulated_only_on_a_cpu_known_to_lack_it(has_bf16, precision, accelerator, expected,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(lsl.cli, "cpu_has_bf16", lambda: has_bf16)
    assert bf16_emulated(precision, accelerator) is expected


@pytest.mark.parametrize("has_bf16", [False, True])
def test_fit_warns_once_before_training_when_bf16_would_be_emulated(has_bf16: bool, tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lsl.cli, "cpu_has_bf16", lambda: has_bf16)
    assert run_main(["fit", "--config", QUICKSTART, *QUIET, "--trainer.accelerator=cpu", "--trainer.max_steps=1",
                     "--trainer.precision=bf16-mixed", "--test_after_fit=false"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "without bf16 instructions" in line]
    if has_bf16:
        assert warned == []
    else:
        assert len(warned) == 1
        assert warned[0].startswith("lsl: warning: trainer.precision=bf16-mixed on a CPU without bf16 instructions")
        assert "--trainer.precision=32-true" in warned[0]


@pytest.mark.parametrize(("has_bf16", "mode", "warns"), [(False, ["--dry-run"], True), (True, ["--dry-run"], False),
                                                         (False, ["--slurm"], False)], ids=["no-bf16", "bf16", "slurm"])
def test_a_sweep_says_once_in_its_own_output_that_its_runs_would_emulate_bf16(has_bf16: bool, mode: list[str],
                                                                              warns: bool, tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """Each run's own warning goes to its log file, which nobody watching the sweep reads; a SLURM sweep runs on
    other machines, whose CPUs this one cannot speak for."""
    from lsl.sweep import sweep_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lsl.cli, "cpu_has_bf16", lambda: has_bf16)
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(f"name: fast\nconfig: {QUICKSTART}\n"
                          "overrides: {trainer.accelerator: cpu, trainer.precision: bf16-mixed}\n"
                          "grid: {seed_everything: [0, 1, 2]}\n")
    assert sweep_command(["--config", str(sweep_file), "--logs", str(tmp_path / "logs"), *mode]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "without bf16 instructions" in line]
    assert len(warned) == int(warns)
    if warns:
        assert warned[0].startswith("lsl: warning: sweep fast: trainer.precision=bf16-mixed")
        assert "set trainer.precision: 32-true in the sweep's overrides" in warned[0]
