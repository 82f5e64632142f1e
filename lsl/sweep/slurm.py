"""SLURM: one array job script per stage and a ``submit.sh`` that chains them, task by task."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from lsl.sweep.run_state import CONFIG_FILE, DONE_FILE, OVERRIDES_FILE, TEACHER_CONFIG_FILE, write_run_files
from lsl.sweep.schema import Run, Stage, Sweep

# A SLURM task's own record of its attempts: "<seconds carried from earlier attempts> <this attempt's start>".
ATTEMPT_FILE = "sweep_slurm_attempt"


@dataclass
class SlurmOptions:
    """What each SLURM array task asks for: ``gpus`` per task (one node, one process per GPU, DDP when > 1)."""

    gpus: int = 1
    cpus_per_gpu: int = 4
    time: str = "04:00:00"
    partition: str | None = None
    max_concurrent: int | None = None


def write_slurm(sweep: Sweep, runs: list[Run], options: SlurmOptions, folder: Path) -> Path:
    """One array job script per stage (task i = grid point i) and ``submit.sh``, which chains the stages with
    ``--dependency=aftercorr`` (task i of a student starts when task i of its teacher succeeded). A stage that
    takes its runs from another sweep (``Stage.source``) has no script: its runs have finished there."""
    folder.mkdir(parents=True, exist_ok=True)
    for run in runs:
        write_run_files(sweep, run)
    stages = [stage for stage in sweep.stages if stage.source is None]
    scripts = {}
    for stage in stages:
        stage_runs = [run for run in runs if run.stage is stage]
        script = folder / f"{stage.name or 'runs'}.sbatch"
        script.write_text(_sbatch(sweep, stage, stage_runs, options, folder))
        script.chmod(0o755)
        scripts[stage.name] = script
    submit = folder / "submit.sh"
    lines = ["#!/usr/bin/env bash", f"# Submits sweep {sweep.name}: {len(runs)} runs.", "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}"]
    for stage in stages:
        variable = _job_variable(stage)
        teacher = _stage(sweep, stage.teacher) if stage.teacher else None
        dependency = (f"--dependency=aftercorr:${{{_job_variable(teacher)}}} "
                      if teacher is not None and teacher.source is None else "")
        lines.append(f"{variable}=$(sbatch --parsable {dependency}{shlex.quote(str(scripts[stage.name]))})")
        lines.append(f'echo "{stage.name or "runs"}: job ${{{variable}}}"')
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def _stage(sweep: Sweep, name: str) -> Stage:
    return next(stage for stage in sweep.stages if stage.name == name)


def _job_variable(stage: Stage) -> str:
    return f"job_{(stage.name or 'runs').replace('-', '_')}"


def _sbatch(sweep: Sweep, stage: Stage, runs: list[Run], options: SlurmOptions, folder: Path) -> str:
    array = f"0-{len(runs) - 1}" + (f"%{options.max_concurrent}" if options.max_concurrent else "")
    job = f"{sweep.name}-{stage.name}" if stage.name else sweep.name
    header = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={job}",
        f"#SBATCH --array={array}",
        "#SBATCH --nodes=1",
        f"#SBATCH --ntasks-per-node={options.gpus}",  # Lightning's SLURM support: one task per GPU
        f"#SBATCH --gres=gpu:{options.gpus}",
        f"#SBATCH --cpus-per-task={options.cpus_per_gpu}",
        f"#SBATCH --time={options.time}",
        f"#SBATCH --output={folder}/{job}-%a.out",
        "#SBATCH --signal=SIGUSR1@120",  # Lightning saves and requeues before the time limit
        "#SBATCH --requeue",
    ]
    if options.partition:
        header.append(f"#SBATCH --partition={options.partition}")
    trainer = ["--trainer.accelerator=gpu", f"--trainer.devices={options.gpus}", "--trainer.num_nodes=1"]
    if options.gpus > 1:
        trainer.append("--trainer.strategy=ddp")
    directories = "\n".join(f"  {shlex.quote(str(run.directory))}" for run in runs)
    fingerprints = "\n".join(f"  {run.fingerprint}" for run in runs)
    # A student keeps a copy of its teacher's config (run_state.TEACHER_CONFIG_FILE), taken when it starts: the
    # teacher has finished by then, which it had not when these scripts were written.
    teachers = "" if stage.teacher is None else (
        "teachers=(\n" + "\n".join(f"  {shlex.quote(str(run.teacher.directory))}" for run in runs) + "\n)\n"
        f'cp "${{teachers[$SLURM_ARRAY_TASK_ID]}}/{CONFIG_FILE}" "$run/{TEACHER_CONFIG_FILE}"\n')
    return "\n".join(header) + f"""
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
runs=(
{directories}
)
fingerprints=(
{fingerprints}
)
run="${{runs[$SLURM_ARRAY_TASK_ID]}}"
if [ -f "$run/{DONE_FILE}" ]; then
  echo "$run finished earlier; nothing to do"
  exit 0
fi
{teachers}resume=()
# A requeued task (Lightning requeues before the time limit; a preempted one is requeued too) starts here again.
# The time of the attempts before it counts as the local runner counts it (run_state._earlier_attempts_s): each
# from its start to its last checkpoint, plus what that one carried; a task that starts from scratch carries 0.
earlier=0
if [ -f "$run/checkpoints/last.ckpt" ]; then
  resume=(--ckpt_path "$run/checkpoints/last.ckpt")
  if [ -f "$run/{ATTEMPT_FILE}" ]; then
    read -r carried started < "$run/{ATTEMPT_FILE}"
    checkpointed=$(stat -c %Y "$run/checkpoints/last.ckpt")
    earlier=$(( carried + (checkpointed > started ? checkpointed - started : 0) ))
  fi
fi
echo "$earlier $(date +%s)" > "$run/{ATTEMPT_FILE}"
SECONDS=0
srun lsl fit --config {shlex.quote(str(stage.config))} --config "$run/{OVERRIDES_FILE}" {' '.join(trainer)} "${{resume[@]}}"
echo "{{\\"wall_s\\": $((SECONDS + earlier)), \\"attempt_s\\": $SECONDS, \\"slurm_job\\": \\"$SLURM_ARRAY_JOB_ID\\", \\"fingerprint\\": \\"${{fingerprints[$SLURM_ARRAY_TASK_ID]}}\\"}}" > "$run/{DONE_FILE}"
"""
