"""The GPU check: one command that measures every GPU goal of lsl within eight minutes of wall time.

A GPU is lent to this project rarely and for about 15 minutes, so this script is written and tested
beforehand (``--smoke`` on a CPU, in the slow tests) and run unattended when one comes:

    python benchmarks/gpu_check.py                        # on a CUDA machine: the full check, under 8 minutes
    python benchmarks/gpu_check.py --out $OUT/gpu_check.md
    python benchmarks/gpu_check.py --smoke                # on a CPU: tiny sizes, every part, well under 2 minutes

Parts, in this order (the ones the GPU goals depend on most come first, so a short window still gets them):

1. ``lsl fit`` of ``configs/quickstart.yaml`` and of the CIFAR-10 ResNet-32 recipe (``configs/cifar10/ce.yaml``)
   for a few hundred steps each, in fp32, bf16-mixed and fp16-mixed (the ``configs/hardware`` overlays),
   with ``images_on_device`` on. Each run must log finite training losses, validation and test metrics,
   and report from inside the fit that its training images sit on the accelerator.
2. ``benchmarks/throughput.py`` on ResNet-32, lsl against the hand-written loop, with bf16 and channels_last
   (the goal: lsl >= 0.95x the loop).
3. A 64k-step estimate through ``lsl fit`` itself (the recipe with bf16 and channels_last, 50,000 images,
   validation every epoch), from the wall times of the logged steps after the warm-up (the goal: under
   10 minutes on one H100/H200-class GPU).
4. 1, 2, 4 and 8 concurrent ``throughput.py --paths lsl`` copies: the aggregate images/s, i.e. how many
   sweep runs one GPU takes before they only share it.
5. ``lsl fit`` under the ``configs/hardware/ddp.yaml`` overlay: one process, and two when two GPUs are visible.
6. Part 2 again with ``--compile``, last because compiling costs the most and may not help; the 64k estimate
   from throughput.py uses whichever of parts 2 and 6 was faster.

The CIFAR-shaped data is synthetic: random pixels (brightness tied to the label, so a network can learn
something) written in the ``cifar-10-batches-py`` format into a temporary folder and read by
``lsl.data.CIFAR10``, so that the real data path runs and the GPU machine needs no dataset.

Budget: 480 s of wall time in all (``--budget``). Every part runs in its own process group with its own
cap, cut to what is left of the total, so one part that hangs or fails costs at most its cap: it is
recorded as ``FAILED`` with its last error line and the next part starts. A part that no longer fits is
recorded as skipped. The Markdown record is rewritten after every part (a check cut short from outside
still leaves what it measured), printed at the end, and each part's full output is kept beside it in
``<record>_logs/``.

``--smoke`` runs the same code on a CPU with tiny sizes; parts that need CUDA (fp16-mixed) or that a CPU
cannot time in seconds (compiling, 4 and 8 copies, two GPUs) are recorded as skipped with the reason.
Its numbers mean nothing; it only keeps the script from rotting before a GPU arrives.
"""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # the budget counts this process's own imports too

import argparse
import datetime
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
CONFIGS = REPO / "configs"
RECIPE_STEPS = 64_000
RECIPE_BATCH = 128
GOAL_RATIO = 0.95
GOAL_MINUTES = 10.0
PROBE = "gpu_check probe:"  # the line DataProbe prints from inside each fit


@dataclass(frozen=True)
class Sizes:
    """How much work each part does: the full check on a GPU, or a smoke run on a CPU."""

    budget_s: float  # the whole check
    min_start_s: float  # a part that would get less than this is skipped, not started
    cifar_train_images: int
    cifar_test_images: int
    quickstart_steps: int
    resnet_steps: int
    resnet_batch: int
    resnet_depth: int  # 32 is the recipe; the smoke run trains a ResNet-8 through the same code
    fit_subset: int | None  # training images for the part-1 fits (a ratio of validation to training as in the recipe)
    log_every: int
    fits_at_once: int
    fit_cap_s: float
    throughput: tuple[int, int, int, int]  # steps, warm-up steps, rounds, images
    throughput_batch: int
    throughput_cap_s: float
    estimate_steps: int
    estimate_log_every: int
    estimate_skip_steps: int  # logged steps before this are the warm-up, outside the timed stretch
    estimate_cap_s: float
    copies: tuple[int, ...]
    copies_run: tuple[int, int, int]  # steps, warm-up steps, images per copy
    copies_cap_s: float
    ddp_steps: int
    ddp_cap_s: float
    compile_run: tuple[int, int, int, int]  # part 2's run, with one round: each round compiles again
    compile_cap_s: float
    reserve_s: float  # kept back at the end for writing the record


FULL = Sizes(
    budget_s=480, min_start_s=20, cifar_train_images=50_000, cifar_test_images=10_000,
    quickstart_steps=300, resnet_steps=300, resnet_batch=128, resnet_depth=32, fit_subset=10_000, log_every=25,
    fits_at_once=6,
    fit_cap_s=120, throughput=(400, 50, 3, 50_000), throughput_batch=RECIPE_BATCH, throughput_cap_s=90,
    estimate_steps=1200, estimate_log_every=50, estimate_skip_steps=200, estimate_cap_s=90,
    copies=(1, 2, 4, 8), copies_run=(500, 150, 10_000), copies_cap_s=60, ddp_steps=100, ddp_cap_s=60,
    compile_run=(400, 100, 1, 50_000), compile_cap_s=150, reserve_s=12,
)
SMOKE = Sizes(
    budget_s=300, min_start_s=5, cifar_train_images=400, cifar_test_images=100,
    quickstart_steps=25, resnet_steps=25, resnet_batch=16, resnet_depth=8, fit_subset=None, log_every=5, fits_at_once=2,
    fit_cap_s=90, throughput=(2, 1, 1, 256), throughput_batch=8, throughput_cap_s=90,
    estimate_steps=14, estimate_log_every=2, estimate_skip_steps=4, estimate_cap_s=90,
    copies=(1, 2), copies_run=(2, 1, 256), copies_cap_s=90, ddp_steps=25, ddp_cap_s=90,
    compile_run=(2, 1, 1, 256), compile_cap_s=0, reserve_s=5,
)


class DataProbe(pl.Callback):
    """Says from inside an ``lsl fit`` where its training images live, and stops a fit whose images are not on
    the accelerator it trains on (``images_on_device`` is the whole point of the device data path).

    Added to the fits with ``--trainer.callbacks+=gpu_check.DataProbe``; the benchmarks folder is on their
    PYTHONPATH.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images = trainer.datamodule.train_set.images
        print(f"{PROBE} images on {images.device}, {images.dtype}, precision {trainer.precision}, "
              f"world size {trainer.world_size}", flush=True)
        if images.device.type != pl_module.device.type:
            raise RuntimeError(f"training images on {images.device}, the model on {pl_module.device}: "
                               "images_on_device did not apply")


# ------------------------------------------------------------------------------------------- the record


@dataclass
class Row:
    """One line of the record: a part, ``ok`` / ``FAILED: ...`` / ``skipped: ...``, what it measured."""

    part: str
    status: str
    result: str = ""
    seconds: float | None = None


@dataclass
class Record:
    """Everything the check measured, written as Markdown after every part."""

    path: Path
    smoke: bool
    header: list[str]
    rows: list[Row] = field(default_factory=list)
    goals: list[tuple[str, str, str]] = field(default_factory=list)
    started: float = _STARTED

    def add(self, row: Row) -> None:
        self.rows.append(row)
        seconds = "" if row.seconds is None else f" ({row.seconds:.1f} s)"
        print(f"[gpu_check {time.monotonic() - self.started:6.1f} s] {row.part}: {row.status}"
              f"{' - ' + row.result if row.result else ''}{seconds}", file=sys.stderr, flush=True)
        self.write()

    def markdown(self) -> str:
        lines = ["# lsl GPU check", ""] + [f"- {line}" for line in self.header]
        lines.append(f"- wall time so far: {time.monotonic() - self.started:.0f} s")
        if self.smoke:
            lines += ["", "Smoke run: tiny sizes, on a CPU where CUDA is missing. The numbers mean nothing; only "
                          "that every part ran."]
        lines += ["", "| part | status | result | seconds |", "|---|---|---|---|"]
        lines += [f"| {_cell(row.part)} | {_cell(row.status)} | {_cell(row.result)} | "
                  f"{'' if row.seconds is None else f'{row.seconds:.1f}'} |" for row in self.rows]
        if self.goals:
            lines += ["", "| goal | measured | verdict |", "|---|---|---|"]
            lines += [f"| {_cell(goal)} | {_cell(value)} | {_cell(verdict)} |" for goal, value, verdict in self.goals]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.path.write_text(self.markdown())


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------- child processes


@dataclass
class Child:
    """A finished (or killed) child process: its exit status, its output and how long it ran."""

    returncode: int | None
    output: str
    seconds: float
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def failure(self, limit: float) -> str:
        if self.timed_out:
            return f"FAILED: timed out after {limit:.0f} s; last line: {last_error_line(self.output)}"
        return f"FAILED: exit {self.returncode}: {last_error_line(self.output)}"


def last_error_line(output: str) -> str:
    """The line of a child's output that says why it failed: the exception or ``lsl: error:`` line nearest the
    end, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    pattern = re.compile(r"^(\w+\.)*\w*(Error|Exception|Interrupt)\b|error:|Error:|FAILED|Killed")
    for line in reversed(lines):
        if pattern.search(line):
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def start(command: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, float]:
    """Start ``command`` in its own process group (a timeout must also end what it spawned: DDP ranks,
    compile workers), its output into ``log``: a pipe could fill while other children are waited on."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), str(BENCHMARKS), os.environ.get("PYTHONPATH")])))
    with open(log, "w") as file:
        file.write(f"$ {' '.join(command)}\n(in {cwd})\n\n")
        file.flush()
        process = subprocess.Popen(command, cwd=cwd, stdout=file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    return process, time.monotonic()


def finish(process: subprocess.Popen, started: float, limit: float, log: Path) -> Child:
    """Wait for ``process`` until ``limit`` seconds after it started; past that, end its whole group."""
    timed_out = False
    try:
        process.wait(timeout=max(0.0, started + limit - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    # Also after a normal exit: a rank or worker it left behind would hold the GPU through the next part.
    _end_group(process)
    return Child(process.returncode, log.read_text(errors="replace"), time.monotonic() - started, timed_out)


def _end_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_many(commands: list[tuple[list[str], Path, Path]], limit: float, at_once: int) -> list[Child]:
    """Run (command, cwd, log) triples, ``at_once`` at a time, each for at most ``limit`` seconds (and all of
    them within the budget the caller gave: a child started late gets what is left)."""
    deadline = time.monotonic() + limit
    results: list[Child | None] = [None] * len(commands)
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    queue = list(range(len(commands)))
    try:
        while queue or running:
            while queue and len(running) < at_once:
                index = queue.pop(0)
                if deadline - time.monotonic() < 1:
                    results[index] = Child(None, "not started: the part's time ran out", 0.0, True)
                    continue
                running[index] = start(*commands[index])
            for index, (process, started) in list(running.items()):
                if process.poll() is not None or time.monotonic() >= deadline:
                    results[index] = finish(process, started, deadline - started, commands[index][2])
                    del running[index]
            time.sleep(0.2)
    finally:
        # Reached with children still running only when this process is being stopped (SIGTERM, Ctrl-C): they
        # run in their own sessions, so nothing else would end them.
        for process, _ in running.values():
            _end_group(process)
    return results  # type: ignore[return-value]


def lsl_command() -> list[str]:
    """The ``lsl`` console script beside this interpreter, else ``python -m lsl`` (the same entry point)."""
    script = Path(sys.executable).with_name("lsl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lsl"]


# ------------------------------------------------------------------------------------------- the check


class Check:
    """Runs the parts in order within the budget and fills the record."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path, record: Record) -> None:
        self.args, self.sizes, self.workdir, self.record = args, sizes, workdir, record
        self.cuda = args.device == "cuda"
        self.deadline = record.started + sizes.budget_s
        self.logs = args.out.with_name(args.out.stem + "_logs")
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cifar_root = workdir / "cifar10"
        self.measured: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic() - self.sizes.reserve_s

    def grant(self, cap: float) -> float | None:
        """Seconds a part may use: its cap, cut to what is left; None when too little is left to start it."""
        seconds = min(cap, self.left())
        return seconds if seconds >= self.sizes.min_start_s else None

    def part(self, name: str, body: Callable[[], Row | list[Row]]) -> None:
        """Run one part; whatever it raises becomes its FAILED row, and the check goes on."""
        began = time.monotonic()
        try:
            rows = body()
        except Exception as error:  # one broken part must not cost the rest of the window
            message = (str(error).strip().splitlines() or [""])[-1]
            rows = Row(name, f"FAILED: {type(error).__name__}: {message}", seconds=time.monotonic() - began)
        for row in rows if isinstance(rows, list) else [rows]:
            self.record.add(row)

    def out_of_time(self, name: str) -> Row:
        return Row(name, f"skipped: out of time ({max(self.left(), 0):.0f} s of the {self.sizes.budget_s:.0f} s "
                         "budget left)")

    # ----------------------------------------------------------------------------- synthetic data

    def synthetic_cifar(self) -> Row:
        began = time.monotonic()
        write_synthetic_cifar10(self.cifar_root, self.sizes.cifar_train_images, self.sizes.cifar_test_images)
        return Row("synthetic CIFAR-10 files", "ok", f"{self.sizes.cifar_train_images:,} training + "
                   f"{self.sizes.cifar_test_images:,} test images, cifar-10-batches-py format",
                   time.monotonic() - began)

    # ----------------------------------------------------------------------------- part 1 and 5: lsl fit

    def fit_command(self, config: str, overlays: list[str], steps: int, extra: list[str]) -> list[str]:
        command = [*lsl_command(), "fit", "--config", str(CONFIGS / config)]
        for overlay in overlays:
            command += ["--config", str(CONFIGS / "hardware" / overlay)]
        command += [f"--trainer.accelerator={'gpu' if self.cuda else 'cpu'}", f"--trainer.max_steps={steps}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    "--data.init_args.images_on_device=true", "--trainer.callbacks+=gpu_check.DataProbe"]
        if config.startswith("cifar10/"):
            command += [f"--data.init_args.dataset.init_args.root={self.cifar_root}",
                        "--data.init_args.dataset.init_args.download=false",
                        f"--data.init_args.batch_size={self.sizes.resnet_batch}",
                        f"--model.init_args.backbone.init_args.depth={self.sizes.resnet_depth}"]
        return command + extra

    def fits(self) -> list[Row]:
        sizes = self.sizes
        runs = {"quickstart": ("quickstart.yaml", sizes.quickstart_steps, []),
                "ResNet-32, CIFAR-10-shaped": ("cifar10/ce.yaml", sizes.resnet_steps,
                                               [f"--data.init_args.train_subset={sizes.fit_subset}"]
                                               if sizes.fit_subset else [])}
        # name -> (overlays, the precision Lightning must then report)
        precisions = {"fp32": ([], "32-true"), "bf16-mixed": (["bf16.yaml"], "bf16-mixed"),
                      "fp16-mixed": (["fp16.yaml"], "16-mixed")}
        rows: dict[str, Row] = {}
        planned = []
        for run, (config, steps, extra) in runs.items():
            for precision, (overlays, expected) in precisions.items():
                name = f"fit {run}, {precision}"
                if precision == "fp16-mixed" and not self.cuda:
                    rows[name] = Row(name, "skipped: needs CUDA (fp16 autocast and loss scaling are GPU-only)")
                    continue
                folder = self.workdir / f"fit-{len(planned)}"
                command = self.fit_command(config, overlays, steps,
                                           [f"--trainer.log_every_n_steps={sizes.log_every}", *extra])
                planned.append((name, steps, expected, (command, folder, self.logs / f"fit-{len(planned)}.log")))
                rows[name] = Row(name, "")
        limit = self.grant(sizes.fit_cap_s)
        if limit is None:
            return [self.out_of_time(name) if not row.status else row for name, row in rows.items()]
        children = run_many([triple for *_, triple in planned], limit, sizes.fits_at_once)
        for (name, steps, expected, (_, folder, _)), child in zip(planned, children):
            rows[name] = guarded(name, lambda: self.fit_row(name, steps, expected, folder, child, limit))
        return list(rows.values())

    def fit_row(self, name: str, steps: int, precision: str, folder: Path, child: Child, limit: float) -> Row:
        if not child.ok:
            return Row(name, child.failure(limit), seconds=child.seconds)
        scalars = _scalars(folder)
        losses = scalars.get("train/loss", {})
        problems = []
        if len(losses) < 2:
            problems.append(f"{len(losses)} train/loss points logged")
        elif not all(math.isfinite(value) for value in losses.values()):
            problems.append("a non-finite train/loss")
        for prefix in ("val/", "test/"):
            tags = [tag for tag in scalars if tag.startswith(prefix)]
            if not tags:
                problems.append(f"no {prefix}* metric logged")
            elif not all(math.isfinite(value) for tag in tags for value in scalars[tag].values()):
                problems.append(f"a non-finite {prefix}* metric")
        probe = [line.split(PROBE, 1)[1].strip() for line in child.output.splitlines() if PROBE in line]
        if not probe:
            problems.append("the data probe did not report")
        elif self.cuda and "images on cuda" not in probe[0]:
            problems.append(f"training images not on the GPU ({probe[0]})")
        elif f"precision {precision}," not in probe[0]:
            problems.append(f"precision {precision} asked for, the fit ran with: {probe[0]}")
        if problems:
            return Row(name, f"FAILED: {'; '.join(problems)}", seconds=child.seconds)
        first, last = (losses[step] for step in (min(losses), max(losses)))
        test_acc = scalars.get("test/acc", {})
        accuracy = f", test/acc {list(test_acc.values())[-1]:.3f}" if test_acc else ""
        return Row(name, "ok", f"{steps} steps, train/loss {first:.3f} -> {last:.3f} (all finite), {len(scalars)} "
                   f"metrics{accuracy}; {probe[0]}", child.seconds)

    def ddp(self) -> list[Row]:
        rows = []
        gpus = _cuda_devices() if self.cuda else 0
        for processes in (1, 2):
            name = f"fit ResNet-32 under ddp.yaml, {processes} process{'es' if processes > 1 else ''}"
            if processes == 2 and gpus < 2:
                reason = f"{gpus} GPU visible" if self.cuda else "needs two GPUs (CPU run)"
                rows.append(Row(name, f"skipped: {reason}"))
                continue
            limit = self.grant(self.sizes.ddp_cap_s)
            if limit is None:
                rows.append(self.out_of_time(name))
                continue
            folder = self.workdir / f"ddp-{processes}"
            extra = [f"--trainer.devices={processes}", f"--trainer.log_every_n_steps={self.sizes.log_every}"]
            if not self.cuda:
                extra.append("--trainer.sync_batchnorm=false")  # SyncBatchNorm is GPU-only; gloo runs the rest
            if self.sizes.fit_subset:
                extra.append(f"--data.init_args.train_subset={self.sizes.fit_subset}")
            command = self.fit_command("cifar10/ce.yaml", ["ddp.yaml"], self.sizes.ddp_steps, extra)
            child = run_many([(command, folder, self.logs / f"ddp-{processes}.log")], limit, 1)[0]
            rows.append(guarded(name, lambda: self.fit_row(name, self.sizes.ddp_steps, "32-true", folder, child,
                                                            limit)))
        return rows

    # ----------------------------------------------------------------------------- part 3: the 64k estimate

    ESTIMATE = "64k-step estimate through lsl fit (bf16, channels_last, all images, validation every epoch)"

    def fit_estimate(self) -> Row:
        name = self.ESTIMATE
        limit = self.grant(self.sizes.estimate_cap_s)
        if limit is None:
            return self.out_of_time(name)
        folder = self.workdir / "estimate"
        command = self.fit_command("cifar10/ce.yaml", ["bf16.yaml"], self.sizes.estimate_steps,
                                   ["--model.init_args.channels_last=true", "--test_after_fit=false",
                                    f"--trainer.log_every_n_steps={self.sizes.estimate_log_every}"])
        child = run_many([(command, folder, self.logs / "estimate.log")], limit, 1)[0]
        if not child.ok:
            return Row(name, child.failure(limit), seconds=child.seconds)
        if not all(math.isfinite(value) for value in _scalars(folder).get("train/loss", {}).values()):
            return Row(name, "FAILED: a non-finite train/loss", seconds=child.seconds)
        times = _wall_times(folder, "train/loss")
        window = [(step, wall) for step, wall in times if step >= self.sizes.estimate_skip_steps]
        if len(window) < 2:
            return Row(name, f"FAILED: {len(window)} logged steps after the warm-up, 2 needed", seconds=child.seconds)
        (first_step, first_time), (last_step, last_time) = window[0], window[-1]
        steps_per_s = (last_step - first_step) / (last_time - first_time)
        minutes = RECIPE_STEPS / steps_per_s / 60
        self.measured["fit_minutes"] = minutes
        return Row(name, "ok", f"{steps_per_s:.1f} steps/s over steps {first_step} to {last_step} "
                   f"({(last_step - first_step) * self.sizes.resnet_batch / (last_time - first_time):,.0f} img/s): "
                   f"64,000 steps in {minutes:.1f} min, plus start-up", child.seconds)

    # ----------------------------------------------------------------------------- parts 2, 4 and 6: throughput.py

    def throughput_command(self, paths: str, run: tuple[int, int, int, int], compiled: bool) -> list[str]:
        steps, warmup, rounds, images = run
        return [sys.executable, str(BENCHMARKS / "throughput.py"), "--device", self.args.device,
                "--models", "resnet32", "--paths", paths, "--precision", "bf16-mixed", "--channels-last",
                "--steps", str(steps), "--warmup", str(warmup), "--rounds", str(rounds), "--images", str(images),
                "--batch-size", str(self.sizes.throughput_batch),
                *(["--compile"] if compiled else [])]

    @staticmethod
    def throughput_name(compiled: bool) -> str:
        return f"throughput.py ResNet-32, bf16, channels_last{', compile' if compiled else ''}: lsl vs hand loop"

    def throughput(self, compiled: bool) -> Row:
        name = self.throughput_name(compiled)
        if compiled and not self.cuda:
            return Row(name, "skipped: compiling takes minutes on a CPU (smoke run)")
        limit = self.grant(self.sizes.compile_cap_s if compiled else self.sizes.throughput_cap_s)
        if limit is None:
            return self.out_of_time(name)
        tag = "compile" if compiled else "eager"
        run = self.sizes.compile_run if compiled else self.sizes.throughput
        child = run_many([(self.throughput_command("lsl,hand", run, compiled),
                           self.workdir / f"throughput-{tag}", self.logs / f"throughput-{tag}.log")], limit, 1)[0]
        if not child.ok:
            return Row(name, child.failure(limit), seconds=child.seconds)
        lsl, hand, ratio, spread = parse_throughput(child.output)
        self.measured[f"lsl_{tag}"], self.measured[f"ratio_{tag}"] = lsl, ratio
        return Row(name, "ok", f"lsl {lsl:,.0f} img/s, hand {hand:,.0f} img/s, lsl / hand {ratio:.3f} (rounds "
                   f"{spread}); 64,000 steps at lsl's speed: {_minutes(lsl):.1f} min", child.seconds)

    def copies(self) -> list[Row]:
        rows = []
        steps, warmup, images = self.sizes.copies_run
        for count in FULL.copies:
            name = f"{count} concurrent throughput.py --paths lsl"
            if count not in self.sizes.copies:
                rows.append(Row(name, "skipped: smoke run (on 2 CPU cores more copies only split the cores)"))
                continue
            limit = self.grant(self.sizes.copies_cap_s)
            if limit is None:
                rows.append(self.out_of_time(name))
                continue
            command = self.throughput_command("lsl", (steps, warmup, 1, images), compiled=False)
            children = run_many([(command, self.workdir / f"copies-{count}-{i}", self.logs / f"copies-{count}-{i}.log")
                                 for i in range(count)], limit, count)
            failed = [child for child in children if not child.ok]
            seconds = max(child.seconds for child in children)
            if failed:
                rows.append(Row(name, f"{failed[0].failure(limit)} ({len(failed)} of {count} copies failed)",
                                seconds=seconds))
                continue
            rows.append(guarded(name, lambda: self.copies_row(name, count, children, seconds)))
        return rows

    def copies_row(self, name: str, count: int, children: list[Child], seconds: float) -> Row:
        # The sum of each copy's own images/s: their timed stretches overlap but for the start-up jitter,
        # which the warm-up steps absorb.
        speeds = [parse_throughput(child.output)[0] for child in children]
        total = sum(speeds)
        self.measured[f"copies_{count}"] = total
        single = self.measured.get("copies_1")
        against = f" ({total / single:.2f}x one copy)" if single else ""
        return Row(name, "ok", f"aggregate {total:,.0f} img/s{against}, per copy {min(speeds):,.0f} to "
                   f"{max(speeds):,.0f}", seconds)

    # ----------------------------------------------------------------------------- the goals

    def goals(self) -> None:
        measured = self.measured
        best = max(("eager", "compile"), key=lambda tag: measured.get(f"lsl_{tag}", 0.0))
        if f"lsl_{best}" in measured:
            ratio = measured[f"ratio_{best}"]
            setting = "bf16, channels_last" + (", compile" if best == "compile" else "")
            self.record.goals.append((f"lsl >= {GOAL_RATIO}x the hand-written loop (ResNet-32, {setting})",
                                      f"{ratio:.3f}", "met" if ratio >= GOAL_RATIO else "NOT met"))
            minutes = _minutes(measured[f"lsl_{best}"])
            self.record.goals.append((f"64k ResNet-32 steps in under {GOAL_MINUTES:.0f} min (throughput.py, "
                                      f"{setting})", f"{minutes:.1f} min",
                                      "met" if minutes < GOAL_MINUTES else "NOT met"))
        if "fit_minutes" in measured:
            minutes = measured["fit_minutes"]
            self.record.goals.append((f"64k ResNet-32 steps in under {GOAL_MINUTES:.0f} min (lsl fit with validation, "
                                      "bf16, channels_last)", f"{minutes:.1f} min",
                                      "met" if minutes < GOAL_MINUTES else "NOT met"))
        levels = {count: measured[f"copies_{count}"] for count in FULL.copies if f"copies_{count}" in measured}
        if levels:
            best_count = max(levels, key=levels.get)
            # Runs per GPU: the most copies that still add at least 10% to the aggregate of half as many.
            useful = max((count for count in levels if count == 1 or levels[count] >= 1.1 * levels.get(count // 2, 0)),
                         default=1)
            self.record.goals.append(("sweep runs per GPU", ", ".join(f"{count}: {speed:,.0f} img/s"
                                                                      for count, speed in levels.items()),
                                      f"best aggregate at {best_count}; {useful} still add 10% or more"))

    def run(self) -> None:
        self.part("synthetic CIFAR-10 files", self.synthetic_cifar)
        self.part("fits", self.fits)
        self.part(self.throughput_name(compiled=False), lambda: self.throughput(compiled=False))
        self.part(self.ESTIMATE, self.fit_estimate)
        self.part("concurrent copies", self.copies)
        self.part("ddp", self.ddp)
        self.part(self.throughput_name(compiled=True), lambda: self.throughput(compiled=True))
        try:
            self.goals()
        except Exception as error:  # the measurements above are the record; the summary of them is extra
            self.record.goals.append(("the goals", f"{type(error).__name__}: {error}", "FAILED to summarise"))
        if self.args.smoke:
            self.record.goals = [(goal, value, "smoke run: not a measurement") for goal, value, _ in self.record.goals]


def guarded(name: str, make_row: Callable[[], Row]) -> Row:
    """``make_row()``, or the FAILED row of what it raised: reading one run's results must not lose the others'."""
    try:
        return make_row()
    except Exception as error:
        return Row(name, f"FAILED: {type(error).__name__}: {(str(error).strip().splitlines() or [''])[-1]}")


def parse_throughput(output: str) -> tuple[float, float, float, str]:
    """lsl img/s, hand img/s (nan without the hand path), lsl / hand and the per-round range, from the first
    table throughput.py prints."""
    match = re.search(r"^\| resnet32, \d+ steps \| ([\d,]+) \| ([\d,]+|-) \| ([\d.]+|-) \| ([^|]+) \|",
                      output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no ResNet-32 row in throughput.py's output: {last_error_line(output)}")

    def number(text: str) -> float:
        return float("nan") if text == "-" else float(text.replace(",", ""))

    return number(match[1]), number(match[2]), number(match[3]), match[4].strip()


def _minutes(images_per_second: float) -> float:
    return RECIPE_STEPS * RECIPE_BATCH / images_per_second / 60


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar the fit run in ``folder`` logged (its newest run directory)."""
    from lsl.report import read_scalars

    runs = sorted((folder / "logs").glob("*/version_*"), key=lambda path: path.stat().st_mtime)
    if not runs:
        raise RuntimeError(f"no run directory under {folder / 'logs'}")
    return read_scalars(runs[-1])


def _wall_times(folder: Path, tag: str) -> list[tuple[int, float]]:
    """(step, wall time) of each logged ``tag``: TensorBoard stamps every event with the time it was written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((folder / "logs").glob("*/version_*/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            points.update((event.step, event.wall_time) for event in accumulator.Scalars(tag))
    return sorted(points.items())


def write_synthetic_cifar10(root: Path, train_images: int, test_images: int) -> None:
    """``root/cifar-10-batches-py`` as ``lsl.data.CIFAR10`` reads it, with random pixels: five training batches,
    a test batch and the meta file. Each class gets its own brightness, so a network can learn something."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(path: Path, size: int, label: str) -> None:
        labels = rng.integers(0, 10, size)
        pixels = rng.integers(0, 80, (size, 3072), dtype=np.uint8) + (labels * 19).astype(np.uint8)[:, None]
        with open(path, "wb") as file:
            pickle.dump({"batch_label": label, "labels": labels.tolist(), "data": pixels, "filenames": []}, file)

    per_batch = math.ceil(train_images / 5)
    for index in range(1, 6):
        batch(folder / f"data_batch_{index}", per_batch, f"training batch {index} of 5")
    batch(folder / "test_batch", test_images, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, file)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def _header(args: argparse.Namespace, sizes: Sizes) -> list[str]:
    import torch

    if args.device == "cuda":
        try:
            properties = torch.cuda.get_device_properties(0)
            device = (f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} "
                      f"visible, CUDA {torch.version.cuda}")
        except Exception as error:  # a broken driver is worth recording, not worth losing the window to
            device = f"CUDA unreadable ({type(error).__name__}: {error})"
    else:
        device = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return [f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"device: {device}",
            f"torch {torch.__version__}, lightning {pl.__version__}, python {sys.version.split()[0]}, "
            f"lsl commit {commit}",
            f"mode: {'smoke' if args.smoke else 'full'}, budget {sizes.budget_s:.0f} s",
            f"command: {' '.join(lsl_command())} fit ... for the fits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every part, on a CPU (the slow test)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="the Markdown record")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole check (480 full, 300 smoke)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when present")
    args = parser.parse_args()
    # Stopped from outside (a device lease ending, a CI timeout): unwind, so that the children are ended and
    # the record of what was measured is still written and printed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    sizes = SMOKE if args.smoke else FULL
    if args.budget is not None:
        sizes = replace(sizes, budget_s=args.budget)
    if args.device == "cpu" and not args.smoke:
        print("gpu_check: no CUDA device: the full check would take hours on a CPU; run with --smoke",
              file=sys.stderr)
        sys.exit(2)
    if args.smoke:
        # The smoke run's children share a small CPU side by side: OpenMP threads spinning against each other
        # (and against whatever else runs there) turn a millisecond step into a second.
        os.environ["OMP_NUM_THREADS"] = "1"
    args.out = args.out.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = Record(args.out, args.smoke, _header(args, sizes))
    record.write()
    workdir = Path(tempfile.mkdtemp(prefix="lsl-gpu-check-"))
    try:
        Check(args, sizes, workdir, record).run()
    except (SystemExit, KeyboardInterrupt):
        record.add(Row("the check", "FAILED: stopped from outside before its last part"))
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        record.write()
        print(record.markdown())
    if any(row.status.startswith("FAILED") for row in record.rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
