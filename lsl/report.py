"""Reports: ``lsl report logs/<sweep>`` turns a sweep's TensorBoard runs into tables and plots.

Runs that differ only in their seeds (grid keys with ``seed`` in their name) form a group; each group gets
the mean and sample standard deviation over its seeds of

- at the **last epoch**: ``test/acc``, ``test/ece``, ``test/nll``, and on the mislabelled training samples the
  share predicted as their noisy label (``train/memorised``) and as their true label (``train/corrected``);
- at the **best noisy-validation epoch** (the highest ``val/acc_noisy``; never the best test epoch): the same,
  read from ``test_best/*``, which ``lsl fit`` logs when it keeps that checkpoint
  (``--checkpoint.monitor=val/acc_noisy``, as the sweeps in ``configs/sweeps/`` do).

Written to ``<sweep>/report/`` (or ``--out``): ``results.md``, ``results.csv``, and the plots
``acc_vs_alpha.png``, ``ece_vs_alpha.png`` and ``memorisation.png``, which also go to TensorBoard there.
Failed runs (a diverged loss, say) are counted and listed with their error, never silently dropped. So are
runs that cannot be read (a finished run whose event files are missing, truncated, or have no ``test/acc``)
and **stale** runs (made with another config than the sweep file and its base configs now give: their
recorded fingerprint differs), which stay out of the means. Runs that **collapsed** (their last
``test/top_class_share`` at or above :data:`lsl.diagnostics.COLLAPSE_SHARE`) stay in the table, marked.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsl.diagnostics import COLLAPSE_SHARE, TOP_CLASS_SHARE, collapsed
from lsl.errors import ConfigError
from lsl.sweep import DONE_FILE, FAILED_FILE, RUN_FILE, load_sweep, recorded_fingerprint

METHOD_NAMES = {"CrossEntropy": "CE", "LabelSmoothing": "LS", "ForwardCorrection": "FC",
                "BackwardCorrection": "BC", "TeacherStudentModule": "KD"}
# (column, how it is read, scale for the Markdown table, decimals)
LAST_METRICS = [("acc", "test/acc", 100, 2), ("ece", "test/ece", 1, 3), ("nll", "test/nll", 1, 3),
                ("memorised", "train/memorised", 100, 1), ("corrected", "train/corrected", 100, 1)]
BEST_METRICS = [("best_epoch", None, 1, 1), ("best_acc", "test_best/acc", 100, 2), ("best_ece", "test_best/ece", 1, 3),
                ("best_nll", "test_best/nll", 1, 3), ("best_memorised", "train/memorised", 100, 1),
                ("best_corrected", "train/corrected", 100, 1)]
SELECTION_METRIC = "val/acc_noisy"
DESCRIPTION_COLUMNS = ["stage", "dataset", "noise", "rate", "teacher", "method", "alpha"]

Scalars = dict[str, dict[int, float]]


@dataclass
class RunResult:
    """One finished (or failed) run of a sweep: what it was, and the numbers it logged."""

    directory: Path
    description: dict[str, Any]
    group: tuple
    metrics: dict[str, float] = field(default_factory=dict)
    memorisation: list[float] = field(default_factory=list)  # train/memorised per epoch
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


# ------------------------------------------------------------------------------------------- reading runs


def read_scalars(directory: Path) -> Scalars:
    """Every scalar a run logged, ``{tag: {step: value}}``; a step logged twice (a resumed run) keeps the later."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: Scalars = {}
    for events in sorted(directory.glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update((event.step, event.value) for event in accumulator.Scalars(tag))
    return scalars


def truncated_events(directory: Path) -> str | None:
    """Whether the run's newest event file ends inside a record (TensorBoard's reader stops there silently,
    dropping what follows), as a reason; None when it ends on a record boundary. Older files are those of
    attempts that were killed and resumed: the resumed run logs again what a killed attempt lost."""
    files = sorted(directory.glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    for events in files[-1:]:
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
    for column, tag, _, _ in LAST_METRICS:
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


def _last(values: dict[int, float]) -> float:
    return values[max(values)]


def _at_step(values: dict[int, float], step: int) -> float:
    """The value logged at ``step``, else the last one before it (training metrics close the epoch)."""
    earlier = [logged for logged in values if logged <= step]
    return values[max(earlier)] if earlier else values[min(values)]


def describe(config: dict[str, Any], teacher_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run is, read from its resolved ``config.yaml``: dataset, noise model and rate, method, alpha."""
    data = (config.get("data") or {}).get("init_args") or {}
    model = config.get("model") or {}
    noise = data.get("noise") or {}
    loss = (model.get("init_args") or {}).get("loss") or {"class_path": "lsl.losses.CrossEntropy"}
    model_name = _short(model.get("class_path", ""))
    description = {
        "dataset": _short((data.get("dataset") or {}).get("class_path", "")),
        "noise": _noise_name(noise),
        "rate": (noise.get("init_args") or {}).get("rate"),
        "method": METHOD_NAMES.get(model_name) or METHOD_NAMES.get(_short(loss["class_path"]), _short(loss["class_path"])),
        "alpha": None if model_name == "TeacherStudentModule" else _alpha(loss),
        "teacher": None,
    }
    if teacher_config is not None:
        teacher = describe(teacher_config)
        description["teacher"] = teacher["method"] + (f" {teacher['alpha']:g}" if teacher["alpha"] else "")
    return description


def _noise_name(noise: dict[str, Any]) -> str:
    """``SymmetricNoise``; a human-noise label set is named by its key: ``HumanNoise(worse_label)``."""
    if not noise:
        return "none"
    key = (noise.get("init_args") or {}).get("key")
    return _short(noise.get("class_path", "")) + (f"({key})" if key else "")


def _panel(summary: GroupSummary) -> tuple:
    """The noise a plot panel shows: its model and rate."""
    return summary.description["noise"], summary.description["rate"]


def _panel_title(noise: str, rate: float | None) -> str:
    return f"{noise} {rate:g}" if rate is not None else noise


def _alpha(loss: dict[str, Any]) -> float | None:
    name = _short(loss.get("class_path", ""))
    if name == "CrossEntropy":
        return 0.0  # the paper's convention: cross-entropy is label smoothing with alpha 0
    alpha = (loss.get("init_args") or {}).get("alpha")
    return float(alpha) if alpha is not None else None


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


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
        description = describe(_read_config(directory), _teacher_config(info))
        description["stage"] = info.get("stage", "")
        group = (info.get("stage", ""),) + tuple(
            (key, label) for key, label in info.get("labels", {}).items() if "seed" not in key.rsplit(".", 1)[-1])
        result = RunResult(directory, description, group)
        result.stale = fingerprints.stale(directory, info)
        if done:
            result.unreadable, scalars = _unreadable(directory)
            result.metrics, result.memorisation = run_metrics(scalars)
        else:
            result.error = json.loads((directory / FAILED_FILE).read_text()).get("error") or "failed"
        results.append(result)
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
                sweep = load_sweep(sweep_file)
            except ConfigError as error:
                raise ConfigError(f"run {str(directory)!r} was made by sweep file {str(sweep_file)!r}, which cannot be "
                                  f"read now to check that its runs are current: {error}") from None
            self.by_file[sweep_file] = {(run.point, run.stage.name): run.fingerprint for run in sweep.runs(Path("logs"))}
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
    for name in ("config.yaml", "overrides.yaml"):  # a run that failed before Lightning saved its config
        if (directory / name).is_file():
            return yaml.safe_load((directory / name).read_text()) or {}
    return {}


def _teacher_config(info: dict[str, Any]) -> dict[str, Any] | None:
    teacher = info.get("teacher_run")
    return _read_config(Path(teacher)) if teacher else None


METHOD_ORDER = ["CE", "LS", "FC", "BC", "KD"]


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
    return (description["stage"] == "student", description["dataset"], description["noise"], _sort_key(description["rate"]),
            _method_rank((description["teacher"] or "").split(" ")[0]), _sort_key(description["teacher"]),
            _method_rank(method), method, _sort_key(description["alpha"]))


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


# ------------------------------------------------------------------------------------------------ tables


def markdown_tables(summaries: list[GroupSummary], title: str, left_out: list[RunResult] = ()) -> str:
    """The last-epoch and best-validation-epoch tables, mean +- std over seeds (accuracies and shares in %), and
    the lists of failed, collapsed, and ``left_out`` (stale or unreadable) runs."""
    columns = [column for column in DESCRIPTION_COLUMNS if any(_shown(s.description.get(column)) for s in summaries)]
    lines = [f"# {title}", ""]
    for heading, metrics in (("Last epoch", LAST_METRICS), ("Best noisy-validation epoch", BEST_METRICS)):
        names = [_heading(column) for column, *_ in metrics]
        lines += [f"## {heading}", "", "| " + " | ".join(columns + ["runs"] + names) + " |",
                  "|" + "---|" * (len(columns) + 1 + len(names))]
        for summary in summaries:
            cells = [_cell(summary.description.get(column)) for column in columns]
            notes = ([f"{len(summary.collapsed)} collapsed"] if summary.collapsed else []) + (
                [f"{len(summary.failed)} failed"] if summary.failed else [])
            cells.append(f"{len(summary.finished)}" + (f" ({', '.join(notes)})" if notes else ""))
            cells += [_mean_std(summary, column, scale, decimals) for column, _, scale, decimals in metrics]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failures = [run for summary in summaries for run in summary.failed]
    if failures:
        lines += ["## Failed runs", ""] + [f"- `{run.directory}`: {run.error}" for run in failures] + [""]
    collapses = [run for summary in summaries for run in summary.collapsed]
    if collapses:
        lines += ["## Collapsed runs", "",
                  f"In the means above, but most of their test predictions went to one class (at least "
                  f"{COLLAPSE_SHARE:.0%}): their accuracy is about chance, not a property of the method.", ""]
        lines += [f"- `{run.directory}`: top class share {run.top_class_share:.1%}" for run in collapses] + [""]
    stale = [run for run in left_out if run.stale is not None]
    if stale:
        lines += ["## Stale runs", "", "Left out of the tables: run them again with `lsl sweep --config SWEEP.yaml "
                  "--rerun-stale`, or keep them with `--accept-stale`.", ""]
        lines += [f"- `{run.directory}`: {run.stale}" for run in stale] + [""]
    unreadable = [run for run in left_out if run.stale is None and run.unreadable is not None]
    if unreadable:
        lines += ["## Unreadable runs", "", "Finished, but left out of the tables: their numbers cannot be read.", ""]
        lines += [f"- `{run.directory}`: {run.unreadable}" for run in unreadable] + [""]
    lines += ["acc: test accuracy (%) on the clean test set; ece, nll: on the test set; memorised, corrected: "
              "share (%) of the mislabelled training samples predicted as their noisy label and as their true "
              "label, over the epoch's augmented batches. Mean +- sample std over seeds.", ""]
    return "\n".join(lines)


def _heading(column: str) -> str:
    return column.replace("best_", "")


def _shown(value: Any) -> bool:
    return value not in (None, "", "none")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mean_std(summary: GroupSummary, metric: str, scale: float, decimals: int) -> str:
    mean = summary.mean(metric)
    if mean is None:
        return "n/a"
    std = summary.std(metric)
    text = f"{mean * scale:.{decimals}f}"
    return text if std is None else f"{text} +- {std * scale:.{decimals}f}"


def write_csv(summaries: list[GroupSummary], path: Path) -> None:
    metrics = [column for column, *_ in LAST_METRICS + BEST_METRICS]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DESCRIPTION_COLUMNS + ["runs", "failed"]
                        + [f"{metric}_{stat}" for metric in metrics for stat in ("mean", "std")] + ["collapsed"])
        for summary in summaries:
            row = [_cell(summary.description.get(column)) for column in DESCRIPTION_COLUMNS]
            row += [len(summary.finished), len(summary.failed)]
            for metric in metrics:
                row += [_csv_number(summary.mean(metric)), _csv_number(summary.std(metric))]
            writer.writerow(row + [len(summary.collapsed)])


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


# ------------------------------------------------------------------------------------------------- plots


def plot_against_alpha(summaries: list[GroupSummary], metric: str, best_metric: str | None, ylabel: str,
                       scale: float = 1.0):
    """One panel per noise model and rate, one line per method: the metric against alpha (cross-entropy is LS at 0).

    The last epoch is solid; the best noisy-validation epoch, when given, dashed. A method with no alpha
    (FC, BC with the data's T) is a horizontal line. Returns None when nothing has an alpha.
    """
    import matplotlib.pyplot as plt

    classifiers = [s for s in summaries if s.description["method"] != "KD" and s.mean(metric) is not None]
    panels = sorted({_panel(s) for s in classifiers}, key=_sort_key)
    if not classifiers or not any(s.description["alpha"] for s in classifiers):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (noise, rate) in zip(axes[0], panels):
        panel = [s for s in classifiers if _panel(s) == (noise, rate)]
        methods = sorted({s.description["method"] for s in panel})
        if "LS" in methods and "CE" in methods:
            methods.remove("CE")  # drawn as alpha 0 of the LS line
        for method in methods:
            series = [s for s in panel if s.description["method"] == method
                      or (method == "LS" and s.description["method"] == "CE")]
            _plot_series(axis, method, series, metric, best_metric, scale)
        axis.set_title(_panel_title(noise, rate))
        axis.set_xlabel("alpha")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _plot_series(axis, method: str, series: list[GroupSummary], metric: str, best_metric: str | None,
                 scale: float) -> None:
    with_alpha = sorted((s for s in series if s.description["alpha"] is not None), key=lambda s: s.description["alpha"])
    if method == "LS" and any(s.description["method"] == "CE" for s in series):
        method = "LS (alpha 0: CE)"
    if len(with_alpha) > 1 or (with_alpha and method.startswith(("LS", "CE"))):
        lines = [(metric, "-", "last epoch")] + ([(best_metric, "--", "best val")] if best_metric else [])
        for name, style, what in lines:
            points = [(s.description["alpha"], scale * s.mean(name), scale * (s.std(name) or 0.0)) for s in with_alpha
                      if s.mean(name) is not None]
            if points:
                x, y, error = zip(*points)
                axis.errorbar(x, y, yerr=error, linestyle=style, marker="o", capsize=3, label=f"{method} ({what})")
    else:
        for summary in series:
            color = f"C{2 + METHOD_ORDER.index(method) if method in METHOD_ORDER else 7}"  # C0, C1: the LS lines
            axis.axhline(scale * summary.mean(metric), linestyle=":", label=f"{method} (last epoch)", color=color)


def plot_memorisation(summaries: list[GroupSummary]):
    """One panel per stage, noise model and rate: the share of mislabelled samples fitted to their noisy label, per epoch."""
    import matplotlib.pyplot as plt

    curves = [(s, s.memorisation_curve()) for s in summaries]
    curves = [(s, curve) for s, curve in curves if curve]
    if not curves:
        return None
    panels = sorted({(s.description["stage"], *_panel(s)) for s, _ in curves},
                    key=lambda panel: (panel[0] == "student", _sort_key(panel)))  # a teacher before its student
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (stage, noise, rate) in zip(axes[0], panels):
        for summary, curve in curves:
            if (summary.description["stage"], *_panel(summary)) == (stage, noise, rate):
                axis.plot(range(1, len(curve) + 1), [100 * value for value in curve], label=_legend(summary))
        axis.set_title(" ".join(part for part in (stage, _panel_title(noise, rate)) if part))
        axis.set_xlabel("epoch")
        axis.set_ylabel("memorised (% of mislabelled samples)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def _legend(summary: GroupSummary) -> str:
    description = summary.description
    text = description["method"]
    if description["alpha"]:
        text += f" {description['alpha']:g}"
    if description["teacher"]:
        text += f" <- {description['teacher']}"
    return text


def _sort_key(value: Any) -> tuple:
    return tuple((item is None, str(item) if not isinstance(item, (int, float)) else "", item or 0)
                 for item in (value if isinstance(value, tuple) else (value,)))


# ---------------------------------------------------------------------------------------------- the command


def write_report(sweep_dir: Path, out: Path | None = None, stream=None) -> Path:
    """Reads the runs under ``sweep_dir`` and writes the tables and plots; returns the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    if not sweep_dir.is_dir():
        raise ConfigError(f"{str(sweep_dir)!r} is not a directory: give a sweep's folder, like logs/<sweep name>")
    results, unfinished = load_runs(sweep_dir)
    if not results:
        raise ConfigError(f"no finished runs under {str(sweep_dir)!r} (looked for {RUN_FILE} beside {DONE_FILE}): "
                          f"run `lsl sweep --config SWEEP.yaml` first")
    out = out or sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarise(results)
    left_out = [result for result in results if result.stale is not None or result.unreadable is not None]
    (out / "results.md").write_text(markdown_tables(summaries, f"Sweep {sweep_dir.name}", left_out))
    write_csv(summaries, out / "results.csv")
    figures = {"acc_vs_alpha": plot_against_alpha(summaries, "acc", "best_acc", "test accuracy (%)", scale=100),
               "ece_vs_alpha": plot_against_alpha(summaries, "ece", "best_ece", "test ECE"),
               "memorisation": plot_memorisation(summaries)}
    for stale in out.glob("events.out.tfevents.*"):  # an earlier report's figures: TensorBoard would show both
        stale.unlink()
    writer = SummaryWriter(str(out))
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(out / f"{name}.png", dpi=120)
            writer.add_figure(f"report/{name}", figure, close=True)
            plt.close(figure)
    writer.close()
    failed = sum(len(summary.failed) for summary in summaries)
    finished = sum(len(summary.finished) for summary in summaries)
    collapses = sum(len(summary.collapsed) for summary in summaries)
    stale = sum(result.stale is not None for result in left_out)
    unreadable = len(left_out) - stale
    extra = "".join(f", {count} {what}" for count, what in ((collapses, "collapsed (marked)"),
                                                            (stale, "stale and left out"),
                                                            (unreadable, "unreadable and left out")) if count)
    print(f"{finished} runs in {len(summaries)} groups ({failed} failed{extra}, {len(unfinished)} unfinished "
          f"and left out) -> {out}/results.md, results.csv, "
          + ", ".join(f"{name}.png" for name, figure in figures.items() if figure is not None), file=stream or sys.stdout)
    return out


def report_command(argv: list[str]) -> None:
    """``lsl report SWEEP_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="lsl report",
                                     description="Tables (Markdown, CSV) and plots from a sweep's runs.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder, logs/<sweep name>")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <sweep_dir>/report)")
    options = parser.parse_args(argv)
    write_report(options.sweep_dir, options.out)
