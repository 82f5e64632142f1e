"""``lsl sweep``: its parser and what it does with the options (list, run here, or write SLURM jobs).

Imports neither Lightning nor torch at module level, so ``lsl sweep --help`` answers at once; checking the runs'
configs imports Lightning once the options are parsed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from lsl.errors import ConfigError, warn
from lsl.sweep.config_check import check_configs, check_named_files
from lsl.sweep.local import LocalRunner
from lsl.sweep.run_state import accept_stale, clear_results
from lsl.sweep.schema import Run, Sweep
from lsl.sweep.slurm import SlurmOptions, write_slurm
from lsl.sweep.sweep_file import load_sweep, sweep_as_file


def parser() -> ArgumentParser:
    """The parser of ``lsl sweep``. Its errors raise ``argparse.ArgumentError`` (``lsl``'s main prints them as one
    ``lsl: error:`` line); ``--help`` prints and exits 0.

    ``--config`` names the sweep file, which is read by :func:`load_sweep` rather than merged into these options
    as a jsonargparse config file: the sweep file's own ``config:`` key (its base ``lsl fit`` config) would be
    taken for a nested config file, and ``lsl report`` reads the same files by path."""
    # print_config=None: jsonargparse's own --print_config belongs to a config-file argument, which this parser
    # has not (see above); the flag of that name below is this command's.
    parser = ArgumentParser(prog="lsl sweep", exit_on_error=False, print_config=None,
                            description="Run a grid of `lsl fit` runs here, or write SLURM array jobs for it.")
    parser.add_argument("--config", "-c", required=True, type=str, help="the sweep file (see configs/sweeps/)")
    parser.add_argument("--print_config", action="store_true",
                        help="print the sweep file as read (base configs as absolute paths, every grid axis as "
                             "label: value) and these options, as YAML; run nothing")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine")
    parser.add_argument("--logs", type=str, default="logs", help="where runs go: <logs>/<sweep>/<point>/")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="runs made with a different config (the sweep file, a base config or a file it names changed since): "
                             "delete their results and run them again from scratch")
    parser.add_argument("--accept-stale", action="store_true",
                        help="runs made with a different config: keep their results as this sweep's")
    parser.add_argument("--slurm", action="store_true", help="write SLURM array job scripts instead of running")
    parser.add_argument("--gpus", type=int, default=1, help="--slurm: GPUs per run (DDP when more than 1)")
    parser.add_argument("--cpus-per-gpu", type=int, default=4, help="--slurm: CPU cores per GPU")
    parser.add_argument("--time", type=str, default="04:00:00", help="--slurm: time limit of each run")
    parser.add_argument("--partition", type=str | None, default=None, help="--slurm: the partition")
    parser.add_argument("--max-concurrent", type=int | None, default=None,
                        help="--slurm: array tasks running at once")
    return parser


def sweep_command(argv: list[str], out=None) -> int:
    """``lsl sweep``: returns the exit status: 0, 1 when a run failed, 130 when interrupted. Every mistake (a bad
    sweep file, a key ``lsl fit`` rejects, stale runs) is a ConfigError before anything starts or is written."""
    out = out or sys.stdout
    options = parser().parse_args(argv)
    if options.parallel < 1:
        raise ConfigError(f"--parallel {options.parallel}: give 1 or more runs at a time")
    if options.gpus < 1:
        raise ConfigError(f"--gpus {options.gpus}: each SLURM run needs at least 1 GPU")
    if options.rerun_stale and options.accept_stale:
        raise ConfigError("--rerun-stale and --accept-stale: pass one (run stale runs again, or keep their results)")
    sweep = load_sweep(options.config)
    if options.print_config:
        printed = {key: value for key, value in options.as_dict().items() if key != "print_config"}
        print(yaml.safe_dump({**printed, "sweep": sweep_as_file(sweep)}, sort_keys=False), end="", file=out)
        return 0
    logs = Path(options.logs)
    runs = sweep.runs(logs)
    own = [run for run in runs if not run.borrowed]
    parsed = check_configs(sweep, own)
    if not options.slurm:
        _warn_emulated_bf16(sweep, parsed)
    if options.dry_run:
        _list_runs(sweep, runs, out)
        return 0
    _check_borrowed_teachers(sweep, runs)
    check_named_files(sweep, own)
    stale = [run for run in own if run.stale]
    if stale and not (options.rerun_stale or options.accept_stale):
        raise ConfigError(f"sweep {sweep.name}: {len(stale)} run(s) were made with a different config (the sweep file, "
                          f"a base config or a file it names changed): e.g. {stale[0].name}; pass --rerun-stale to run "
                          "them again from scratch, or --accept-stale to keep their results")
    for run in stale:
        if options.rerun_stale:
            clear_results(run)
        else:
            accept_stale(run)
    if stale:
        print(f"sweep {sweep.name}: {len(stale)} stale run(s) "
              + ("deleted, to run again" if options.rerun_stale else "kept as they are (--accept-stale)"),
              file=out, flush=True)
    if options.slurm:
        slurm = SlurmOptions(options.gpus, options.cpus_per_gpu, options.time, options.partition, options.max_concurrent)
        submit = write_slurm(sweep, own, slurm, logs / sweep.name / "slurm")
        print(f"wrote {len({run.stage.name for run in own})} array job script(s) for {len(own)} runs; submit with: bash {submit}",
              file=out)
        return 0
    try:
        failed = LocalRunner(sweep, own, options.parallel, out, retry_failed=options.retry_failed).run()
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def _warn_emulated_bf16(sweep: Sweep, configs: list) -> None:
    """The runs about to start here ask for bf16 autocast on a CPU without bf16 instructions: said once, in the
    sweep's own output, as each run's warning goes only to its log."""
    from lsl.cli import bf16_emulated, bf16_emulated_message  # imports Lightning: not needed by `lsl sweep --help`

    for config in configs:
        if bf16_emulated(config.trainer.precision, config.trainer.accelerator):
            fix = "set trainer.precision: 32-true in the sweep's overrides (runs made with bf16 then count as stale)"
            warn(f"sweep {sweep.name}: {bf16_emulated_message(config.trainer.precision, fix)}")
            return


def _check_borrowed_teachers(sweep: Sweep, runs: list[Run]) -> None:
    """A student still to run whose teacher is another sweep's run needs that run finished, and made with the
    config that sweep gives it now: this sweep cannot run it, and would otherwise distil from whatever is there."""
    for run in runs:
        teacher = run.teacher
        if teacher is None or not teacher.borrowed or run.done:
            continue
        source = teacher.stage.source
        if teacher.stale:
            raise ConfigError(f"sweep {sweep.name}: the teacher of {run.name}, {str(teacher.directory)!r}, was made "
                              f"with another config than sweep {source.name} gives it now: bring that sweep up to "
                              f"date first (lsl sweep --config {source.path} --rerun-stale)")
        if not teacher.done:
            raise ConfigError(f"sweep {sweep.name}: the teacher of {run.name} is run {teacher.directory.name} of "
                              f"sweep {source.name}, which has not finished: run it first "
                              f"(lsl sweep --config {source.path})")


def _list_runs(sweep: Sweep, runs: list[Run], out) -> None:
    """One line per run, each flushed: ``lsl sweep --dry-run | head`` stops the listing at the first line."""
    stale = {id(run) for run in runs if run.stale}  # each `stale` reads the run's records: once per run
    borrowed = [run for run in runs if run.borrowed]
    own = [run for run in runs if not run.borrowed]
    done = sum(run.done for run in own if id(run) not in stale)
    own_stale = sum(id(run) in stale for run in own)
    lenders = sorted({run.stage.source.name for run in borrowed})
    print(f"sweep {sweep.name}: {len(own)} runs ({done} done"
          + (f", {own_stale} stale: --rerun-stale or --accept-stale" if own_stale else "") + "), "
          f"{len({run.point for run in runs})} grid points x {len(sweep.stages)} stage(s)"
          + (f"; {len(borrowed)} teacher run(s) of sweep {', '.join(lenders)}, run there" if borrowed else ""),
          file=out, flush=True)
    for run in borrowed:
        state = "stale" if id(run) in stale else "done" if run.done else "todo"
        print(f"  {state:6s} {run.name}: {run.directory} (sweep {run.stage.source.name})", file=out, flush=True)
    for run in own:
        state = ("stale" if id(run) in stale else "done" if run.done else "failed" if run.failed
                 else "resume" if run.last_checkpoint.is_file() else "todo")
        after = f"  (after {run.teacher.name})" if run.teacher else ""
        print(f"  {state:6s} {run.name}{after}", file=out, flush=True)
        print(f"         lsl {shlex.join(run.fit_arguments())}", file=out, flush=True)
