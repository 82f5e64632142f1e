"""Reading a sweep's runs: each run's description, its logged scalars and metrics, and the groups over seeds.

A finished run's numbers come from its TensorBoard event files; a failed run's error from its marker file;
a run made with another config than the sweep file gives now is **stale** and one whose events cannot be
read is **unreadable**: both are kept with their reason, and left out of the groups.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsl.diagnostics import TOP_CLASS_SHARE, collapsed
from lsl.errors import ConfigError
from lsl.report.describe import describe
from lsl.sweep import (
    CONFIG_FILE,
    DONE_FILE,
    FAILED_FILE,
    OVERRIDES_FILE,
    RUN_FILE,
    TEACHER_CONFIG_FILE,
    load_sweep,
    read_record,
    recorded_fingerprint,
)

# Where the last-epoch memorised and corrected columns come from: the paper's diagnostic (the final model in eval
# mode over the un-augmented training split, lsl.train_eval) when a run logged it, else the in-training counts
# over the last epoch's augmented batches (runs made before lsl logged train_eval/*).
DENOISING_TAGS = {"train_eval": ("train_eval/memorised", "train_eval/acc_clean_mislabelled"),
                  "train": ("train/memorised", "train/corrected")}
# (column, how it is read (the first tag the run has), scale for the Markdown table, decimals)
LAST_METRICS = [("acc", "test/acc", 100, 2), ("ece", "test/ece", 1, 3), ("nll", "test/nll", 1, 3),
                ("memorised", tuple(tags[0] for tags in DENOISING_TAGS.values()), 100, 1),
                ("corrected", tuple(tags[1] for tags in DENOISING_TAGS.values()), 100, 1)]
BEST_METRICS = [("best_epoch", None, 1, 1), ("best_acc", "test_best/acc", 100, 2), ("best_ece", "test_best/ece", 1, 3),
                ("best_nll", "test_best/nll", 1, 3), ("best_memorised", "train/memorised", 100, 1),
                ("best_corrected", "train/corrected", 100, 1)]
# Post-hoc temperature scaling of the final weights (lsl.temperature_scaling): the raw test ECE, then each fit's
# temperature and the test ECE after it. Runs made before lsl fitted temperatures have none of these.
CALIBRATION_METRICS = [("ece", "test/ece", 1, 3)] + [
    (f"{column}_{name}", f"test/{tag}_{name}", 1, decimals)
    for name in ("noisy", "noise_aware", "oracle")
    for column, tag, decimals in (("t", "temperature", 2), ("ece", "ece_scaled", 3))]
# The paper's denoising diagnostic (Lukasik et al., ICML 2020, section 4): the final model over the training set,
# accuracy against the true labels overall, on the correctly labelled and on the mislabelled samples, and the
# share of mislabelled samples predicted as their noisy label. Only runs that logged train_eval/* have it.
DIAGNOSTIC_METRICS = [("train_overall", "train_eval/acc_clean", 100, 2),
                      ("train_correct", "train_eval/acc_clean_correct", 100, 2),
                      ("train_mislabelled", "train_eval/acc_clean_mislabelled", 100, 2),
                      ("train_memorised", "train_eval/memorised", 100, 1)]
# What a run cost: its wall time over all its attempts (sweep_done.json's wall_s), in minutes.
COST_METRICS = [("wall_min", None, 1, 1)]
SELECTION_METRIC = "val/acc_noisy"
UNTRAINED_MARK = "train/acc_noisy"  # NaN only at an epoch end that saw no training sample
METHOD_ORDER = ["CE", "LS", "FC", "BC", "KD"]

Scalars = dict[str, dict[int, float]]
_EVENTS_NAME = re.compile(r"^events\.out\.tfevents\.(?P<time>\d+)\..*\.\d+\.(?P<n>\d+)$")


@dataclass
class RunResult:
    """One finished (or failed) run of a sweep: what it was, and the numbers it logged."""

    directory: Path
    description: dict[str, Any]
    group: tuple
    metrics: dict[str, float] = field(default_factory=dict)
    memorisation: list[float] = field(default_factory=list)  # train/memorised per epoch
    denoising_source: str | None = None  # which DENOISING_TAGS the last-epoch memorised and corrected come from
    in_training: dict[str, float] = field(default_factory=dict)  # the train/* last-epoch memorised and corrected
    train_eval_set_aside: bool = False  # it logged train_eval/*, but other runs did not: its train/* are shown
    error: str | None = None  # why the run failed
    unreadable: str | None = None  # why a finished run's numbers cannot be read
    stale: str | None = None  # why the run is not of the sweep as it is now

    @property
    def top_class_share(self) -> float | None:
        return self.metrics.get("top_class_share")

    @property
    def collapsed(self) -> bool:
        return collapsed(self.top_class_share)


@dataclass
class GroupSummary:
    """Runs that differ only in their seeds: mean and standard deviation of each metric."""

    description: dict[str, Any]
    runs: list[RunResult]

    @property
    def finished(self) -> list[RunResult]:
        return [run for run in self.runs if run.error is None]

    @property
    def failed(self) -> list[RunResult]:
        return [run for run in self.runs if run.error is not None]

    @property
    def collapsed(self) -> list[RunResult]:
        return [run for run in self.finished if run.collapsed]

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.finished
                if metric in run.metrics and math.isfinite(run.metrics[metric])]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    def memorisation_curve(self) -> list[float]:
        curves = [run.memorisation for run in self.finished if run.memorisation]
        length = min((len(curve) for curve in curves), default=0)
        return [statistics.fmean(curve[epoch] for curve in curves) for epoch in range(length)]


def has_diagnostic(summaries: list[GroupSummary]) -> bool:
    """Whether any group's runs logged the end-of-fit denoising diagnostic (``train_eval/*``)."""
    return any(summary.mean(column) is not None for summary in summaries for column, *_ in DIAGNOSTIC_METRICS)


def has_temperatures(summaries: list[GroupSummary]) -> bool:
    """Whether any group's runs logged post-hoc temperatures (runs made before lsl fitted them did not)."""
    return any(summary.mean(column) is not None for summary in summaries for column, *_ in CALIBRATION_METRICS[1:])


def read_scalars(directory: Path) -> Scalars:
    """Every scalar a run logged, ``{tag: {step: value}}``; a step logged twice (a resumed run) keeps the later.

    Left out: the epoch-end training metrics (``train/*``) of an epoch end that saw no training sample, where
    ``train/acc_noisy`` is NaN. lsl logged them, all NaN, when Lightning ended the restored epoch of a resumed
    ``max_steps`` fit a second time (lsl.resume.RestoreAware); they would put a NaN point into the run's
    memorisation curve, and a NaN last-epoch value drops the run from its group's mean.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: Scalars = {}
    for events in event_files(directory):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update((event.step, event.value) for event in accumulator.Scalars(tag))
    untrained = {step for step, value in scalars.get(UNTRAINED_MARK, {}).items() if math.isnan(value)}
    for tag, values in scalars.items():
        if tag.startswith("train/"):
            for step in untrained & values.keys():
                del values[step]
    return scalars


def event_files(directory: Path) -> list[Path]:
    """A run's TensorBoard event files, oldest first, by the creation time and counter in their names
    (``events.out.tfevents.<unix time>.<host>.<pid>.<n>``): a copy or a git checkout resets modification times,
    so they cannot tell a killed attempt's file from the resumed attempt's. Names of another form go by mtime."""
    def created(path: Path) -> tuple[float, int]:
        match = _EVENTS_NAME.match(path.name)
        return (float(match["time"]), int(match["n"])) if match else (path.stat().st_mtime, 0)

    return sorted(directory.glob("events.out.tfevents.*"), key=created)


def truncated_events(directory: Path) -> str | None:
    """Whether the run's newest event file ends inside a record (TensorBoard's reader stops there silently,
    dropping what follows), as a reason; None when it ends on a record boundary. Older files are those of
    attempts that were killed and resumed: the resumed run logs again what a killed attempt lost."""
    for events in event_files(directory)[-1:]:
        data = events.read_bytes()
        offset = 0
        while offset < len(data):
            # A TFRecord: uint64 length, uint32 CRC of it, the data, uint32 CRC of the data.
            if len(data) - offset < 12:
                return f"{events.name} is truncated (it ends inside a record header at byte {offset})"
            (length,) = struct.unpack_from("<Q", data, offset)
            if len(data) - offset < 16 + length:
                return f"{events.name} is truncated (its last record needs {16 + length} bytes, {len(data) - offset} are left)"
            offset += 16 + length
    return None


def _unreadable(directory: Path) -> tuple[str | None, Scalars]:
    """Why a finished run's numbers cannot be read (None when they can), and its scalars."""
    if not any(directory.glob("events.out.tfevents.*")):
        return "no TensorBoard event files (deleted?)", {}
    truncated = truncated_events(directory)
    if truncated is not None:
        return truncated, {}
    try:
        scalars = read_scalars(directory)
    except Exception as error:  # tensorboard's reader raises its own error types
        return f"its event files cannot be read: {type(error).__name__}: {error}", {}
    if not scalars.get("test/acc"):
        return "its event files have no test/acc (the run was cut short, or its test after fit was off)", scalars
    return None, scalars


def run_metrics(scalars: Scalars) -> tuple[dict[str, float], list[float]]:
    """The last-epoch and best-validation-epoch metrics of one run, its ``top_class_share`` (the collapse
    check), and its memorisation curve."""
    metrics = {}
    for column, tags, _, _ in LAST_METRICS:
        tag = next((tag for tag in (tags if isinstance(tags, tuple) else (tags,)) if scalars.get(tag)), None)
        if tag is not None:
            metrics[column] = _last(scalars[tag])
    for column, tag, _, _ in CALIBRATION_METRICS[1:] + DIAGNOSTIC_METRICS:
        if scalars.get(tag):
            metrics[column] = _last(scalars[tag])
    if scalars.get(TOP_CLASS_SHARE):
        metrics["top_class_share"] = _last(scalars[TOP_CLASS_SHARE])
    selection = scalars.get(SELECTION_METRIC, {})
    if selection:
        steps = sorted(selection)
        best_step = max(steps, key=lambda step: (selection[step], -step))  # the first epoch reaching the maximum
        metrics["best_epoch"] = float(steps.index(best_step) + 1)
        for column, tag, _, _ in BEST_METRICS[1:]:
            values = scalars.get(tag, {})
            if values:
                metrics[column] = _last(values) if tag.startswith("test_best/") else _at_step(values, best_step)
    memorised = scalars.get("train/memorised", {})
    return metrics, [memorised[step] for step in sorted(memorised)]


def in_training_denoising(scalars: Scalars) -> dict[str, float]:
    """The last-epoch ``memorised`` and ``corrected`` of the in-training counts (``train/*``), where logged."""
    columns = ("memorised", "corrected")
    return {column: _last(scalars[tag]) for column, tag in zip(columns, DENOISING_TAGS["train"]) if scalars.get(tag)}


def one_denoising_source(results: list[RunResult]) -> None:
    """Make the memorised and corrected columns one measurement across the report: when some finished runs
    logged ``train_eval/*`` and others did not (made before lsl logged it), every run shows its in-training
    counts; a mean of the two kinds in one cell would be neither. The legend says so."""
    finished = [run for run in results if run.denoising_source is not None]
    if {run.denoising_source for run in finished} != set(DENOISING_TAGS):
        return
    for run in finished:
        if run.denoising_source == "train_eval":
            for column in ("memorised", "corrected"):
                if column in run.in_training:
                    run.metrics[column] = run.in_training[column]
                else:
                    run.metrics.pop(column, None)
            run.denoising_source, run.train_eval_set_aside = "train", True


def denoising_source(scalars: Scalars) -> str | None:
    """Which of ``DENOISING_TAGS`` a run's last-epoch memorised and corrected columns are read from (None: neither)."""
    return next((source for source, tags in DENOISING_TAGS.items() if scalars.get(tags[0])), None)


def _last(values: dict[int, float]) -> float:
    return values[max(values)]


def _at_step(values: dict[int, float], step: int) -> float:
    """The value logged at ``step``, else the last one before it (training metrics close the epoch)."""
    earlier = [logged for logged in values if logged <= step]
    return values[max(earlier)] if earlier else values[min(values)]


def load_runs(sweep_dir: Path) -> tuple[list[RunResult], list[Path]]:
    """The finished and failed runs under a sweep directory (with their ``stale`` and ``unreadable`` reasons, if
    any), and the directories of unfinished ones."""
    results, unfinished = [], []
    fingerprints = _CurrentFingerprints()
    for run_file in sorted(sweep_dir.rglob(RUN_FILE)):
        directory = run_file.parent
        done, failed = (directory / DONE_FILE).is_file(), (directory / FAILED_FILE).is_file()
        if not done and not failed:
            unfinished.append(directory)
            continue
        info = json.loads(run_file.read_text())
        config = _read_config(directory)
        description = describe(config, _teacher_config(directory, info, config))
        description["stage"] = info.get("stage", "")
        group = (info.get("stage", ""),) + tuple(
            (key, label) for key, label in info.get("labels", {}).items() if "seed" not in key.rsplit(".", 1)[-1])
        result = RunResult(directory, description, group)
        result.stale = fingerprints.stale(directory, info)
        if done:
            result.unreadable, scalars = _unreadable(directory)
            result.metrics, result.memorisation = run_metrics(scalars)
            result.denoising_source = denoising_source(scalars)
            result.in_training = in_training_denoising(scalars)
            wall_s = read_record(directory / DONE_FILE).get("wall_s")
            if isinstance(wall_s, (int, float)) and not isinstance(wall_s, bool):
                result.metrics["wall_min"] = wall_s / 60
        else:
            result.error = read_record(directory / FAILED_FILE).get("error") or "failed"
        results.append(result)
    one_denoising_source(results)
    return results, unfinished


class _CurrentFingerprints:
    """What each run of a sweep file would run now, to tell which recorded runs are stale."""

    def __init__(self) -> None:
        self.by_file: dict[Path, dict[tuple[str, str], str]] = {}

    def stale(self, directory: Path, info: dict[str, Any]) -> str | None:
        """Why the run is stale, or None (also when its sweep file is unknown or gone: nothing to compare with)."""
        sweep_file = Path(info["sweep_file"]) if info.get("sweep_file") else None
        if sweep_file is None or not sweep_file.is_file():
            return None
        if sweep_file not in self.by_file:
            try:
                runs = load_sweep(sweep_file).runs(Path("logs"))
            except ConfigError as error:
                raise ConfigError(f"run {str(directory)!r} was made by sweep file {str(sweep_file)!r}, which cannot be "
                                  f"read now to check that its runs are current: {error}") from None
            self.by_file[sweep_file] = {(run.point, run.stage.name): run.fingerprint for run in runs}
        current = self.by_file[sweep_file].get((info.get("point"), info.get("stage", "")))
        recorded = recorded_fingerprint(directory)
        if current is None:
            return f"no longer in {sweep_file.name}"
        if recorded is None:
            return "made before lsl recorded what a run runs (no fingerprint)"
        if recorded != current:
            return f"made with a different config ({sweep_file.name} or a base config changed since)"
        return None


def _read_config(directory: Path) -> dict[str, Any]:
    for name in (CONFIG_FILE, OVERRIDES_FILE):  # a run that failed before Lightning saved its config
        if (directory / name).is_file():
            return yaml.safe_load((directory / name).read_text()) or {}
    return {}


def _teacher_config(directory: Path, info: dict[str, Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved config of a student's teacher run: the copy the student kept (``TEACHER_CONFIG_FILE``, the
    teacher it was trained from, even where the student's folder was copied away from the teacher's), else the
    teacher's folder where ``sweep_run.json`` says (runs made before lsl recorded it as an absolute path hold it
    relative to the folder the sweep ran in), else the run folder of the checkpoint the student's config names.
    None for a run that is no student; ``{}`` when none can be read."""
    checkpoint = ((config.get("model") or {}).get("init_args") or {}).get("teacher_checkpoint")
    if not checkpoint and not info.get("teacher_run"):
        return None
    if (directory / TEACHER_CONFIG_FILE).is_file():
        return yaml.safe_load((directory / TEACHER_CONFIG_FILE).read_text()) or {}
    places = [Path(info["teacher_run"])] if info.get("teacher_run") else []
    places += [Path(checkpoint).parent.parent] if checkpoint else []  # <run>/checkpoints/last.ckpt
    for place in places:
        if (place / CONFIG_FILE).is_file():
            return _read_config(place)
    return {}


def summarise(results: list[RunResult]) -> list[GroupSummary]:
    """Runs grouped over seeds, ordered as a paper's table: stage, dataset, noise rate, CE, LS by alpha, FC, BC."""
    groups: dict[tuple, GroupSummary] = {}
    for result in results:
        if result.stale is not None or result.unreadable is not None:  # listed apart, never averaged in
            continue
        groups.setdefault(result.group, GroupSummary(result.description, [])).runs.append(result)
    return sorted(groups.values(), key=_table_order)


def _table_order(summary: GroupSummary) -> tuple:
    description = summary.description
    method = description["method"]
    return (description["stage"] == "student", description["dataset"], description["noise"], sort_key(description["rate"]),
            _method_rank((description["teacher"] or "").split(" ")[0]), sort_key(description["teacher"]),
            _method_rank(method), method, sort_key(description["alpha"]))


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def sort_key(value: Any) -> tuple:
    return tuple((item is None, str(item) if not isinstance(item, (int, float)) else "", item or 0)
                 for item in (value if isinstance(value, tuple) else (value,)))
