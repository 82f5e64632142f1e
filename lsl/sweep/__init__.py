"""Sweeps: a grid of ``lsl fit`` runs over any config keys, with optional teacher -> student stages.

    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --parallel 2   # run it here
    lsl sweep --config configs/sweeps/fashion_mnist_table.yaml --dry-run      # list the runs
    lsl sweep --config configs/sweeps/cifar10_table.yaml --slurm --gpus 1     # write SLURM array jobs

A sweep file names a base config (or one per stage) and a grid; every grid point is one run per stage::

    name: fashion_mnist_table          # runs go to logs/<name>/<point>/ (default: the file's stem)
    config: ../fashion_mnist/ce.yaml   # relative to this file
    overrides:                         # optional, for every run
      trainer.max_epochs: 40
    grid:                              # dotted config keys -> values (a list, or a mapping label -> value)
      model.init_args.loss:
        ce: {class_path: lsl.losses.CrossEntropy}
        ls0.1: {class_path: lsl.losses.LabelSmoothing, init_args: {alpha: 0.1}}
      seed_everything: [0, 1, 2]

With stages, each stage has its own base config; a grid key that starts with a stage's name applies to
that stage only, and ``teacher: <stage>`` fills ``model.init_args.teacher_checkpoint`` with that stage's
``last.ckpt`` at the same grid point::

    stages:
      teacher: {config: ../fashion_mnist/ce.yaml}
      student: {config: ../fashion_mnist/distill.yaml, teacher: teacher}
    grid:
      teacher.model.init_args.loss: {ce: {class_path: lsl.losses.CrossEntropy}, ...}
      seed_everything: [0, 1, 2]

A stage written ``teacher: {sweep: other.yaml}`` trains nothing: its runs are the finished runs of that
(single-config) sweep with exactly the config this grid point gives them, found by fingerprint; a student
still to run is refused while its teacher there has not finished or is stale.

Each run is ``lsl fit --config BASE --config <run>/overrides.yaml`` in its own directory
``logs/<name>/<point>/`` (``logs/<name>/<point>/<stage>/`` with stages), which is also its Trainer's
``default_root_dir``. ``sweep_run.json`` there says what the run is; ``sweep_done.json`` marks it finished, so a
sweep started again skips it, and a run that was interrupted resumes from its ``checkpoints/last.ckpt``.

Both record the run's **fingerprint**: a hash of its base config's content, its overrides (with the content
of each file they name by path) and its teacher's fingerprint. A run with results (done, failed, or a
checkpoint to resume from) whose recorded fingerprint is not the current one was made with another config: it is **stale**, and ``lsl sweep`` refuses to start until
``--rerun-stale`` (run it again from scratch) or ``--accept-stale`` (keep its results). Every run's config is
parsed by ``lsl fit``'s own parser before anything starts, so a misspelt key stops the sweep at once.

The package, one concept per module: ``schema`` (Stage, Run, Sweep and the grid's expansion into runs),
``sweep_file`` (reading and checking a sweep file), ``fit_sections`` (the top-level sections ``lsl fit``
accepts, from its own parser), ``fingerprint``, ``run_state`` (a run's files: overrides, done/failed records,
stale results), ``config_check`` (every run's config parsed before any run), ``local`` (the local scheduler),
``slurm`` (the array job scripts) and ``command`` (``lsl sweep`` itself). None imports Lightning or torch at
module level.
"""

from lsl.sweep.command import parser, sweep_command
from lsl.sweep.config_check import check_configs, check_named_files
from lsl.sweep.fingerprint import recorded_fingerprint, run_fingerprint
from lsl.sweep.fit_sections import config_sections
from lsl.sweep.local import LocalRunner
from lsl.sweep.run_state import (
    CONFIG_FILE,
    DONE_FILE,
    FAILED_FILE,
    LOG_FILE,
    OVERRIDES_FILE,
    RUN_FILE,
    TEACHER_CONFIG_FILE,
    accept_stale,
    clear_results,
    mark_done,
    mark_failed,
    nested,
    read_record,
    write_run_files,
)
from lsl.sweep.schema import TEACHER_KEY, Run, Stage, Sweep
from lsl.sweep.slurm import SlurmOptions, write_slurm
from lsl.sweep.sweep_file import STAGE_KEYS, SWEEP_KEYS, load_sweep, sweep_as_file

__all__ = [
    "CONFIG_FILE",
    "DONE_FILE",
    "FAILED_FILE",
    "LOG_FILE",
    "OVERRIDES_FILE",
    "RUN_FILE",
    "STAGE_KEYS",
    "SWEEP_KEYS",
    "TEACHER_CONFIG_FILE",
    "TEACHER_KEY",
    "LocalRunner",
    "Run",
    "SlurmOptions",
    "Stage",
    "Sweep",
    "accept_stale",
    "check_configs",
    "check_named_files",
    "clear_results",
    "config_sections",
    "load_sweep",
    "mark_done",
    "mark_failed",
    "nested",
    "parser",
    "read_record",
    "recorded_fingerprint",
    "run_fingerprint",
    "sweep_as_file",
    "sweep_command",
    "write_run_files",
    "write_slurm",
]
