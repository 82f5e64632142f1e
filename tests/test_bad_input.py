"""Bad input, tried as a user would: through the real ``lsl`` console script, one process per case.

The project's rule: a user's mistake is refused before a run starts, with ONE line
``lsl: error: <what is wrong and the fix>`` as the last line of stderr, exit status 2, no traceback, and
nothing half-written (no new run folder under ``logs/``, no partial file). Each case below builds its inputs
in a fresh working directory, runs ``lsl``, and :func:`census_class` says what went wrong, if anything.
Every failure message starts with its class, so that a census of the module is a matter of counting:

    TRACEBACK  stderr holds a Python traceback
    SILENT     exit 0: the bad input was accepted and a (wrong or misleading) result was produced
    ORPHAN     refused, but a run folder or file was left behind (or an existing file was changed); the
               whole working directory is watched, not only ``logs/``, less the new complete files of the
               noise-label cache ``data/noisy_labels`` (atomic, checksummed, shared by every run)
    OTHER      refused, but not as the rule says: another exit status, the last line is not
               ``lsl: error: ...``, the message does not name the offending value, or it suggests
               ``weights_only=False``

Only two representative cases run by default (a damaged checkpoint and a misspelt sweep key, about half a
minute: test_cli.py, test_reliability.py and test_checkpoint_check.py refuse the others in process); the rest
are ``slow``:
``pytest tests/test_bad_input.py -m 'slow or not slow'`` runs them all. One tiny checkpoint (2 steps of the
quick start) is trained once per module and shared by every case that needs one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import QUIET, flip_bytes_in_the_weights, write_cifar100

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
SCRIPT = Path(sys.executable).with_name("lsl")
TINY = [*QUIET, "--trainer.max_steps=2"]  # a bad input that is not refused still ends in seconds
FIT = ["fit", "--config", QUICKSTART, *TINY, "--test_after_fit=false"]
NOISE_CACHE = "data/noisy_labels"  # the checksummed noise-label cache: new complete files there are allowed
ARTIFACT_STEM = "digits-train-symmetric-flip-0.4-seed0"  # the quick start's noise labels
TIMEOUT_S = 300


# ------------------------------------------------------------------------------------------- running lsl


def lsl(*args: str, cwd: Path, pipe_into: str | None = None) -> subprocess.CompletedProcess:
    """The console script, importing this checkout; with ``pipe_into``, ``lsl ... | pipe_into`` in bash."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command: list[str] = [str(SCRIPT), *args]
    if pipe_into is not None:
        command = ["bash", "-c", f"set +o pipefail; {shlex.join(command)} | {pipe_into}"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``folder``: files as (size, mtime_ns), folders as None."""
    entries: dict[str, tuple[int, int] | None] = {}
    for path in folder.rglob("*"):
        status = path.lstat()
        entries[path.relative_to(folder).as_posix()] = None if path.is_dir() else (status.st_size, status.st_mtime_ns)
    return entries


def changes(before: dict, after: dict) -> list[str]:
    """Paths added, removed or modified between two snapshots, less new complete files of the noise cache."""
    changed = []
    for path in sorted(set(before) | set(after)):
        if path in before and path in after and before[path] == after[path]:
            continue
        if path not in before and _noise_cache_entry(path):
            continue  # written by the data module's setup: whole (atomic) and checksummed, reused by every run
        state = "new" if path not in before else "removed" if path not in after else "changed"
        changed.append(f"{path} ({state})")
    # Folders that only hold other listed paths add nothing to the message.
    listed = [entry.split(" (")[0] for entry in changed]
    return [entry for entry, path in zip(changed, listed)
            if not any(other.startswith(f"{path}/") for other in listed)]


def _noise_cache_entry(path: str) -> bool:
    if NOISE_CACHE == path or NOISE_CACHE.startswith(f"{path}/"):
        return True
    name = path.rpartition("/")[2]
    return path.startswith(f"{NOISE_CACHE}/") and name.endswith((".npy", ".json")) and not name.startswith(".")


def _matches(named: str | re.Pattern, text: str) -> bool:
    return bool(named.search(text)) if isinstance(named, re.Pattern) else named in text


def census_class(result: subprocess.CompletedProcess, named: tuple, changed: list[str]) -> str | None:
    """None for a clean refusal, else a message that starts with the census class (see the module's docstring)."""
    stderr, code = result.stderr, result.returncode
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    left = f"; left {changed[:8]}" if changed else ""
    if code == 0:
        return f"SILENT: exit 0, the bad input was accepted{left}; stderr ends {[line[:160] for line in lines[-2:]]!r}"
    if "Traceback" in stderr:
        return f"TRACEBACK: exit {code}; last stderr line {last!r}{left}"
    if changed:
        return f"ORPHAN: refused with exit {code} ({last!r}) but left {changed[:8]}"
    problems = []
    if code != 2:
        problems.append(f"exit {code}, not 2")
    if not last.startswith("lsl: error:"):
        problems.append("the last stderr line does not start with 'lsl: error:'")
    missing = [getattr(item, "pattern", item) for item in named if not _matches(item, last)]
    if missing:
        problems.append(f"the last line does not name {missing}")
    if "weights_only=False" in stderr:
        problems.append("the message suggests weights_only=False")
    if problems:
        before = [line[:160] for line in lines[-4:-1]]
        return f"OTHER: {'; '.join(problems)}; last stderr line {last!r}; before it {before!r}"
    return None


# ------------------------------------------------------------------------------ shared trained checkpoints


@dataclass(frozen=True)
class Trained:
    """A finished 2-step quick-start run: its checkpoint, its config.yaml and its noise-label cache."""

    ckpt: Path
    config: Path
    noise_cache: Path


def _train(folder: Path, *extra: str) -> Trained:
    result = lsl(*FIT, *extra, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (folder / "logs").glob("*/version_0")
    return Trained(run / "checkpoints" / "last.ckpt", run / "config.yaml", folder / NOISE_CACHE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """The quick start (digits, SmallCNN width 32, LS alpha 0.4) after 2 steps."""
    return _train(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def trained_cifar100(tmp_path_factory) -> Trained:
    """The quick start's model after 2 steps on a tiny CIFAR-100: 100 classes, 3 input channels."""
    folder = tmp_path_factory.mktemp("trained-cifar100")
    root = write_cifar100(folder / "cifar100")
    return _train(folder, "--data.init_args.dataset=lsl.data.CIFAR100",
                  f"--data.init_args.dataset.init_args.root={root}",
                  "--model.init_args.backbone.init_args.in_channels=3")


@dataclass
class Inputs:
    """What a case may build on: its (empty) working directory and, on demand, the trained checkpoints."""

    cwd: Path
    request: pytest.FixtureRequest

    @property
    def trained(self) -> Trained:
        return self.request.getfixturevalue("trained")

    @property
    def trained_cifar100(self) -> Trained:
        return self.request.getfixturevalue("trained_cifar100")

    def file(self, name: str, content: bytes | str) -> str:
        path = self.cwd / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    def folder(self, name: str, mode: int | None = None) -> str:
        path = self.cwd / "inputs" / name
        path.mkdir(parents=True, exist_ok=True)
        if mode is not None:
            path.chmod(mode)
            if _writable_anyway(path):
                path.chmod(0o700)
                pytest.skip("file permissions are not enforced here (running as root)")
        return str(path)

    def copy_noise_cache(self) -> Path:
        target = self.cwd / NOISE_CACHE
        shutil.copytree(self.trained.noise_cache, target)
        return target


def _writable_anyway(folder: Path) -> bool:
    if not os.access(folder, os.W_OK):
        return False
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


# ----------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(inputs)`` builds what it needs under the working directory and returns the
    arguments of ``lsl``; the refusal's last line must contain each of ``named`` (a string or a regex)."""

    id: str
    argv: Callable[[Inputs], list[str]]
    named: tuple = ()
    fast: bool = False
    pipe_into: str | None = None
    extra_marks: tuple = field(default=())


# Checkpoints damaged every way, for each command that reads one.
def _intact(inputs: Inputs) -> bytes:
    return inputs.trained.ckpt.read_bytes()


def _no_weights(inputs: Inputs, name: str) -> str:
    path = inputs.cwd / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    return str(path)


DAMAGED: dict[str, Callable[[Inputs, str], str]] = {
    "truncated": lambda inputs, name: inputs.file(name, (data := _intact(inputs))[: len(data) // 2]),
    "flipped": lambda inputs, name: inputs.file(name, flip_bytes_in_the_weights(_intact(inputs))),
    "empty": lambda inputs, name: inputs.file(name, b""),
    "text": lambda inputs, name: inputs.file(name, "these are not the weights you are looking for\n"),
    "no-weights": _no_weights,
    "missing": lambda inputs, name: str(inputs.cwd / "inputs" / name),
}
READERS: dict[str, Callable[[Inputs, str], list[str]]] = {
    "fit": lambda inputs, ckpt: [*FIT, f"--ckpt_path={ckpt}"],
    "test": lambda inputs, ckpt: ["test", "--config", QUICKSTART, *QUIET, f"--ckpt_path={ckpt}"],
    "validate": lambda inputs, ckpt: ["validate", "--config", QUICKSTART, *QUIET, f"--ckpt_path={ckpt}"],
    "predict": lambda inputs, ckpt: ["predict", "--config", QUICKSTART, *QUIET, f"--ckpt_path={ckpt}"],
    "estimate-t": lambda inputs, ckpt: _estimate_t(inputs, ckpt, "T.npy"),
}


def _estimate_t(inputs: Inputs, ckpt: str, out: str) -> list[str]:
    return ["estimate-t", "--ckpt", ckpt, "--config", str(inputs.trained.config), "--out", out, "--device", "cpu"]


def _damaged_case(reader: str, damage: str) -> Case:
    name = f"{damage}.ckpt"
    return Case(f"{reader}-ckpt-{damage}", lambda inputs: READERS[reader](inputs, DAMAGED[damage](inputs, name)),
                (name,), fast=(reader, damage) == ("fit", "no-weights"))


CHECKPOINT_CASES = [_damaged_case(reader, damage) for reader in READERS for damage in DAMAGED]


def _copied_ckpt(inputs: Inputs, trained: Trained, name: str = "model.ckpt") -> str:
    return inputs.file(name, trained.ckpt.read_bytes())


MISMATCH_CASES = [
    Case("test-ckpt-of-100-classes",
         lambda inputs: ["test", "--config", QUICKSTART, *QUIET,
                         f"--ckpt_path={_copied_ckpt(inputs, inputs.trained_cifar100, 'other_classes.ckpt')}"],
         ("100",)),
    Case("test-ckpt-of-another-width",
         lambda inputs: ["test", "--config", QUICKSTART, *QUIET, f"--ckpt_path={_copied_ckpt(inputs, inputs.trained)}",
                         "--model.init_args.backbone.init_args.width=16"], ("width",)),
    Case("fit-ckpt-of-another-width",
         lambda inputs: [*FIT, "--trainer.max_steps=3", f"--ckpt_path={_copied_ckpt(inputs, inputs.trained)}",
                         "--model.init_args.backbone.init_args.width=16"], ("width",)),
    Case("fit-ckpt-changed-alpha",
         lambda inputs: [*FIT, "--trainer.max_steps=3", f"--ckpt_path={_copied_ckpt(inputs, inputs.trained)}",
                         "--model.init_args.loss.init_args.alpha=0.1"], ("alpha",)),
    Case("fit-ckpt-changed-loss",
         lambda inputs: [*FIT, "--trainer.max_steps=3", f"--ckpt_path={_copied_ckpt(inputs, inputs.trained)}",
                         "--model.init_args.loss=lsl.losses.CrossEntropy"], ("loss",)),
]


def _edited_sidecar(inputs: Inputs, edit: Callable[[dict], None]) -> list[str]:
    (sidecar,) = inputs.copy_noise_cache().glob("*.json")
    content = json.loads(sidecar.read_text())
    edit(content)
    sidecar.write_text(json.dumps(content, indent=1) + "\n")
    return FIT


RUN_CASES = [
    Case("test-ckpt-last-without-a-run",
         lambda inputs: ["test", "--config", QUICKSTART, *QUIET, "--ckpt_path=last"], ("last",)),
    Case("test-without-ckpt", lambda inputs: ["test", "--config", QUICKSTART, *QUIET], ("ckpt_path",)),
    Case("fit-ckpt-path-a-folder", lambda inputs: [*FIT, f"--ckpt_path={inputs.folder('checkpoints')}"],
         ("checkpoints",)),
    Case("max-epochs-0", lambda inputs: [*FIT, "--trainer.max_epochs=0"], ("max_epochs", "0")),
    Case("max-epochs-negative", lambda inputs: [*FIT, "--trainer.max_epochs=-3"], ("max_epochs", "-3")),
    Case("max-steps-negative", lambda inputs: [*FIT, "--trainer.max_epochs=1", "--trainer.max_steps=-5"],
         ("max_steps", "-5")),
    Case("max-steps-0", lambda inputs: [*FIT, "--trainer.max_steps=0"], ("max_steps", "0")),
    Case("negative-lr", lambda inputs: [*FIT, "--model.init_args.optimizer.init_args.lr=-0.1"], ("lr", "-0.1")),
    Case("train-subset-larger-than-the-data", lambda inputs: [*FIT, "--data.init_args.train_subset=100000"],
         ("train_subset", "100000")),
    Case("noise-sidecar-rate-edited",
         lambda inputs: _edited_sidecar(inputs, lambda sidecar: sidecar["noise"].update(rate=0.2)), (ARTIFACT_STEM,)),
    Case("noise-sidecar-realised-rate-edited",
         lambda inputs: _edited_sidecar(inputs, lambda sidecar: sidecar.update(realised_rate=0.05)), (ARTIFACT_STEM,)),
]

OUTPUT_CASES = [
    Case("save-dir-unwritable",
         lambda inputs: [*FIT, f"--trainer.logger.init_args.save_dir={inputs.folder('ro_logs', 0o500)}"], ("ro_logs",)),
    Case("save-dir-a-file",
         lambda inputs: [*FIT, f"--trainer.logger.init_args.save_dir={inputs.file('logs_file', 'a file')}"],
         ("logs_file",)),
    Case("estimate-t-out-in-an-unwritable-folder",
         lambda inputs: _estimate_t(inputs, _copied_ckpt(inputs, inputs.trained),
                                    f"{inputs.folder('ro_out', 0o500)}/T.npy"), ("ro_out",)),
    Case("estimate-t-out-under-a-file",
         lambda inputs: _estimate_t(inputs, _copied_ckpt(inputs, inputs.trained),
                                    f"{inputs.file('a_file', 'a file')}/T.npy"), ("a_file",)),
]

CONFIG_CASES = [
    Case("config-empty", lambda inputs: ["fit", "--config", inputs.file("empty.yaml", ""), *TINY], ("empty.yaml",)),
    Case("config-only-a-comment", lambda inputs: ["fit", "--config", inputs.file("comment.yaml", "# nothing yet\n"),
                                                  *TINY], ("comment.yaml",)),
    Case("config-a-yaml-list", lambda inputs: ["fit", "--config", inputs.file("list.yaml", "- trainer\n- model\n"),
                                               *TINY], ("list.yaml",)),
    Case("config-missing", lambda inputs: ["fit", "--config", str(inputs.cwd / "inputs" / "missing.yaml"), *TINY],
         ("missing.yaml",)),
    Case("top-level-optimizer", lambda inputs: [*FIT, "--optimizer=torch.optim.Adam"], ("optimizer",)),
    Case("top-level-lr-scheduler",
         lambda inputs: [*FIT, '--lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", '
                               '"init_args": {"step_size": 1}}'], ("lr_scheduler",)),
]


def _sweep(inputs: Inputs, grid: dict, overrides: dict | None = None) -> str:
    spec = {"name": "bad", "config": QUICKSTART,
            "overrides": {"trainer.max_steps": 2, "trainer.enable_progress_bar": False, "test_after_fit": False,
                          **(overrides or {})},
            "grid": grid}
    return inputs.file("sweep.yaml", json.dumps(spec, indent=1))  # JSON is YAML


MISSPELT_LOSS = {"model.init_args.los": [{"class_path": "lsl.losses.CrossEntropy"},
                                         {"class_path": "lsl.losses.LabelSmoothing", "init_args": {"alpha": 0.1}}]}
MISSPELT_EPOCHS = {"trainer.max_epoch": [1, 2]}
SWEEP_CASES = [
    Case("sweep-misspelt-grid-key-dry-run",
         lambda inputs: ["sweep", "--config", _sweep(inputs, MISSPELT_LOSS), "--dry-run"],
         (re.compile(r"model\.init_args\.los\b"),), fast=True),
    Case("sweep-misspelt-grid-key",
         lambda inputs: ["sweep", "--config", _sweep(inputs, MISSPELT_LOSS)],
         (re.compile(r"model\.init_args\.los\b"),)),
    Case("sweep-misspelt-trainer-key-dry-run",
         lambda inputs: ["sweep", "--config", _sweep(inputs, MISSPELT_EPOCHS), "--dry-run"],
         (re.compile(r"trainer\.max_epoch\b"),)),
    Case("sweep-misspelt-trainer-key",
         lambda inputs: ["sweep", "--config", _sweep(inputs, MISSPELT_EPOCHS)], (re.compile(r"trainer\.max_epoch\b"),)),
    Case("sweep-misspelt-override-dry-run",
         lambda inputs: ["sweep", "--config", _sweep(inputs, {"seed_everything": [0, 1]}, {"trainer.max_epoch": 1}),
                         "--dry-run"], (re.compile(r"trainer\.max_epoch\b"),)),
]

OTHER_CASES = [
    Case("noise-rate-above-1", lambda inputs: [*FIT, "--data.init_args.noise.init_args.rate=1.5"], ("rate", "1.5")),
    Case("noise-rate-negative", lambda inputs: [*FIT, "--data.init_args.noise.init_args.rate=-0.1"], ("rate", "-0.1")),
    Case("ls-alpha-1", lambda inputs: [*FIT, "--model.init_args.loss.init_args.alpha=1.0"], ("alpha", "1.0")),
    Case("batch-size-0", lambda inputs: [*FIT, "--data.init_args.batch_size=0"], ("batch_size", "0")),
    Case("accelerator-cuda-without-a-gpu", lambda inputs: [*FIT, "--trainer.accelerator=cuda"],
         (re.compile("cuda", re.IGNORECASE),),
         extra_marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),)),
    Case("seed-negative", lambda inputs: [*FIT, "--seed_everything=-1"], ("seed_everything", "-1")),
    Case("cosine-t-max-0", lambda inputs: [*FIT, "--model.init_args.scheduler.init_args.T_max=0"], ("T_max",)),
    Case("accumulate-grad-batches-0", lambda inputs: [*FIT, "--trainer.accumulate_grad_batches=0"],
         ("accumulate_grad_batches",)),
    Case("val-check-interval-0", lambda inputs: [*FIT, "--trainer.val_check_interval=0"], ("val_check_interval",)),
]

CASES = CHECKPOINT_CASES + MISMATCH_CASES + RUN_CASES + OUTPUT_CASES + CONFIG_CASES + SWEEP_CASES + OTHER_CASES
assert len({case.id for case in CASES}) == len(CASES)


def _param(case: Case):
    marks = list(case.extra_marks) + ([] if case.fast else [pytest.mark.slow])
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(case: Case, tmp_path: Path, request) -> None:
    inputs = Inputs(tmp_path / "work", request)
    inputs.cwd.mkdir()
    arguments = case.argv(inputs)
    before = snapshot(inputs.cwd)

    result = lsl(*arguments, cwd=inputs.cwd, pipe_into=case.pipe_into)

    problem = census_class(result, case.named, changes(before, snapshot(inputs.cwd)))
    assert problem is None, f"{problem}\n  lsl {shlex.join(arguments)}"


# ---------------------------------------------------------------------------------- not refusals, but related


@pytest.mark.slow
def test_allow_changed_hparams_lets_fit_resume_with_another_alpha(tmp_path: Path, trained: Trained) -> None:
    result = lsl(*FIT, "--trainer.max_steps=3", f"--ckpt_path={trained.ckpt}",
                 "--model.init_args.loss.init_args.alpha=0.1", "--allow_changed_hparams=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


# Inputs that look wrong but are not, and must keep working: negative label smoothing (Wei et al., ICML 2022)
# and an estimate-t output folder that does not exist yet (it is created, as for any output file).
@pytest.mark.slow
@pytest.mark.parametrize("make_argv", [
    lambda inputs: [*FIT, "--model.init_args.loss.init_args.alpha=-0.1"],
    lambda inputs: _estimate_t(inputs, _copied_ckpt(inputs, inputs.trained), "no_such_folder/T.npy"),
], ids=["negative-label-smoothing", "estimate-t-out-in-a-new-folder"])
def test_valid_inputs_that_look_wrong_still_run(make_argv, tmp_path: Path, request) -> None:
    inputs = Inputs(tmp_path / "work", request)
    inputs.cwd.mkdir()
    result = lsl(*make_argv(inputs), cwd=inputs.cwd)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_a_dry_run_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    inputs = Inputs(tmp_path, None)
    sweep = _sweep(inputs, {"seed_everything": list(range(3000))})  # far more than a pipe buffer of listing

    result = lsl("sweep", "--config", sweep, "--dry-run", cwd=tmp_path, pipe_into="head -1")

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("sweep bad: 3000 runs") and result.stdout.count("\n") == 1, result.stdout
    broken = [word for word in ("Traceback", "BrokenPipeError") if word in result.stderr]
    assert not broken, f"TRACEBACK: {broken} on stderr after head closed the pipe: {result.stderr[-2000:]}"
    assert not (tmp_path / "logs").exists(), "ORPHAN: a dry run made logs/"
