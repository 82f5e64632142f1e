"""The ``lsl`` entry point: every subcommand in one help, lsl's own subcommands parsed like the Trainer's,
and nothing heavy imported before a subcommand needs it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_clean_failure, run_main

ALL_SUBCOMMANDS = ["fit", "validate", "test", "predict", "sweep", "report", "estimate-t"]
# The public names of `lsl`, as `from lsl import ...` has always offered them.
PUBLIC_NAMES = {
    "lsl.data": ["Batch", "CIFAR10", "CIFAR100", "Digits", "FashionMNIST", "ImageFolder", "NoisyLabelDataModule"],
    "lsl.distill": ["TeacherStudentModule"],
    "lsl.errors": ["ConfigError"],
    "lsl.estimate": ["anchor_points", "estimate_transition_matrix", "estimation_error"],
    "lsl.losses": ["BackwardCorrection", "CrossEntropy", "ForwardCorrection", "LabelSmearing", "LabelSmoothing",
                   "TransitionMatrixLoss"],
    "lsl.models": ["CifarResNet", "PreActResNet18", "ResNet50", "SmallCNN"],
    "lsl.module": ["Classifier"],
    "lsl.noise": ["AsymmetricCIFAR10Noise", "HumanNoise", "MatrixNoise", "NoNoise", "NoiseModel", "PairFlipNoise",
                  "SymmetricNoise"],
    "lsl.views": ["TensorBoardViews"],
}
HEAVY = ("lightning", "torch", "tensorboard", "matplotlib")


def heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter on this checkout; which of :data:`HEAVY` it imported."""
    script = f"import sys\n{code}\nprint(sorted(name for name in {HEAVY!r} if name in sys.modules))"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=environment, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["sweep", "--help"], ["estimate-t", "--help"]],
                         ids=" ".join)
def test_help_imports_neither_lightning_nor_torch(argv: list[str]) -> None:
    code = f"""
from lsl.commands import main
try:
    main({argv!r})
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
"""
    assert heavy_modules_after(code) == []


def test_import_lsl_and_a_light_name_import_nothing_heavy() -> None:
    assert heavy_modules_after("import lsl\nfrom lsl import ConfigError, estimation_error") == []


def test_lsl_help_lists_every_subcommand_with_its_line(capsys) -> None:
    assert run_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lsl")
    listed = [line.split()[0] for line in out.split("subcommands:")[1].splitlines()
              if line.startswith("    ") and not line.startswith("     ")]
    assert listed == ALL_SUBCOMMANDS
    assert "`lsl SUBCOMMAND --help`" in out


def test_lsl_without_a_subcommand_names_them_all(capsys) -> None:
    assert run_main([]) == 2
    err = capsys.readouterr().err
    assert_clean_failure(2, err, "{" + ",".join(ALL_SUBCOMMANDS) + "}", "`lsl --help`")


def test_the_entry_point_is_the_same_from_every_place_it_is_imported() -> None:
    import lsl.__main__
    import lsl.cli
    import lsl.commands

    assert lsl.cli.main is lsl.commands.main is lsl.__main__.main
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'lsl = "lsl.commands:main"' in pyproject


def test_every_public_name_of_lsl_is_the_one_its_module_defines() -> None:
    import lsl

    assert sorted(lsl.__all__) == sorted(name for names in PUBLIC_NAMES.values() for name in names)
    assert set(lsl.__all__) <= set(dir(lsl))
    for module, names in PUBLIC_NAMES.items():
        for name in names:
            assert getattr(lsl, name) is getattr(importlib.import_module(module), name)
    from lsl import Classifier, SymmetricNoise  # noqa: F401 - the import statement itself is what is tested

    with pytest.raises(AttributeError, match="no attribute 'Clasifier'"):
        lsl.Clasifier  # noqa: B018


def test_a_submodule_is_an_attribute_of_lsl_without_its_own_import() -> None:
    code = """
import lsl
assert lsl.noise.SymmetricNoise.__name__ == "SymmetricNoise"
assert lsl.report.describe.__module__ == "lsl.report.describe"  # a subpackage too
"""
    assert heavy_modules_after(code) == []


# -------------------------------------------------------------- lsl's own subcommands, parsed by jsonargparse


@pytest.mark.parametrize("argv, fragment", [
    (["report"], "required: sweep_dir"),
    (["report", "logs/x", "--bogus"], "--bogus"),
    (["report", "logs/x", "--out"], "--out"),
    (["estimate-t", "--ckpt", "a.ckpt"], "required: config, out"),
    (["estimate-t", "--ckpt", "a.ckpt", "--config", "c.yaml", "--out", "T.npy", "--split", "test"], "split"),
    (["estimate-t", "--ckpt", "a.ckpt", "--config", "c.yaml", "--out", "T.npy", "--percentile", "high"],
     "percentile"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_bad_argument_is_one_error_line_pointing_at_the_subcommands_help(argv: list[str], fragment: str,
                                                                         tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)

    assert run_main(argv) == 2

    err = capsys.readouterr().err
    assert_clean_failure(2, err, fragment, f"`lsl {argv[0]} --help`")
    assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_report_reads_its_options_from_a_config_file_and_prints_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.yaml").write_text("sweep_dir: logs/not_there\nout: tables\n")

    assert run_main(["report", "--config", "report.yaml", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "sweep_dir: logs/not_there" in printed and "out: tables" in printed

    assert run_main(["report", "--config", "report.yaml"]) == 2
    assert_clean_failure(2, capsys.readouterr().err, "'logs/not_there' is not a directory")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.yaml"]


def test_estimate_t_keeps_its_config_for_the_runs_config(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--config`` of estimate-t is the run's config.yaml, read for its data section, not a file of options."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "options.yaml").write_text("ckpt: a.ckpt\nout: T.npy\n")

    assert run_main(["estimate-t", "--ckpt", "a.ckpt", "--config", "options.yaml", "--out", "T.npy"]) == 2

    assert_clean_failure(2, capsys.readouterr().err, "'options.yaml' has no data section")


def test_estimate_t_reads_its_options_from_an_options_file_and_prints_them(tmp_path: Path, monkeypatch,
                                                                           capsys) -> None:
    """estimate-t's own options file is ``--options`` (its ``--config`` is the run's); ``--print_config`` shows
    what it would run with and writes nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "options.yaml").write_text("ckpt: a.ckpt\nconfig: run.yaml\nout: T.npy\nsplit: val\n")

    assert run_main(["estimate-t", "--options", "options.yaml", "--percentile", "99", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == {"ckpt": "a.ckpt", "config": "run.yaml", "out": "T.npy", "percentile": 99.0, "split": "val",
                       "temperature": "none", "device": None}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["options.yaml"]

    assert run_main(["estimate-t", "--options", "options.yaml"]) == 2  # the options are used: run.yaml is read
    assert_clean_failure(2, capsys.readouterr().err, "'run.yaml' does not exist")
