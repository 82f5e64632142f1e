"""The report's tables: Markdown (mean +- std over seeds, and the lists of runs left out or marked) and CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lsl.diagnostics import COLLAPSE_SHARE
from lsl.report.runs import (
    BEST_METRICS,
    CALIBRATION_METRICS,
    COST_METRICS,
    DIAGNOSTIC_METRICS,
    LAST_METRICS,
    GroupSummary,
    RunResult,
    has_diagnostic,
    has_temperatures,
)

DESCRIPTION_COLUMNS = ["stage", "dataset", "noise", "rate", "teacher", "method", "alpha", "transition"]


def markdown_tables(summaries: list[GroupSummary], title: str, left_out: list[RunResult] = ()) -> str:
    """The last-epoch and best-validation-epoch tables, mean +- std over seeds (accuracies and shares in %), and
    the lists of failed, collapsed, and ``left_out`` (stale or unreadable) runs."""
    columns = [column for column in DESCRIPTION_COLUMNS if any(_shown(s.description.get(column)) for s in summaries)]
    lines = [f"# {title}", ""]
    tables = [("Last epoch", LAST_METRICS), ("Best noisy-validation epoch", BEST_METRICS)]
    if has_temperatures(summaries):
        tables.append(("Calibration after temperature scaling (last epoch)", CALIBRATION_METRICS))
    if has_diagnostic(summaries):
        tables.append(("Denoising diagnostic (last epoch: the training set against its true labels)",
                       DIAGNOSTIC_METRICS))
    if any(summary.mean("wall_min") is not None for summary in summaries):
        tables.append(("Cost (wall time per run in minutes, over all its attempts)", COST_METRICS))
    for heading, metrics in tables:
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
    lines += [legend(summaries), ""]
    return "\n".join(lines)


def legend(summaries: list[GroupSummary]) -> str:
    """What the columns mean; for memorised and corrected, which measurement the finished runs logged."""
    runs = [run for summary in summaries for run in summary.finished]
    diagnostic = sum(run.denoising_source == "train_eval" for run in runs)
    set_aside = sum(run.train_eval_set_aside for run in runs)
    in_training = "over the epoch's augmented batches (train/memorised, train/corrected)"
    paper = ("by the final model in eval mode over the un-augmented training split, as the paper measures it "
             "(train_eval/memorised, train_eval/acc_clean_mislabelled)")
    if set_aside:
        how = (f"{in_training}, in every run: {len(runs) - set_aside} of the {len(runs)} runs were made before lsl "
               "logged train_eval/*, and one column holds one measurement")
    elif diagnostic == 0:
        how = "over the epoch's augmented batches"
    else:
        how = f"{paper}; at the best epoch, {in_training}"
    return ("acc: test accuracy (%) on the clean test set; ece, nll: on the test set; memorised, corrected: "
            "share (%) of the mislabelled training samples predicted as their noisy label and as their true "
            f"label, {how}.{TEMPERATURE_LEGEND if has_temperatures(summaries) else ''}"
            f"{DIAGNOSTIC_LEGEND if has_diagnostic(summaries) else ''}"
            f"{TRANSITION_LEGEND if any(s.description.get('transition') for s in summaries) else ''}"
            " Mean +- sample std over seeds.")


TRANSITION_LEGEND = (" transition: the T a loss correction was given: a file (e.g. from lsl estimate-t), a matrix "
                     "in the config (by its hash), or data, the T the noise realises against the clean labels.")


TEMPERATURE_LEGEND = (" t_noisy, t_noise_aware, t_oracle: the temperatures fitted on the validation split to the "
                      "noisy labels, to the noisy labels through T (forward-corrected), and to the clean labels (a "
                      "reference no practitioner has); ece_<fit>: the test ECE after dividing the logits by that "
                      "temperature.")


DIAGNOSTIC_LEGEND = (" Denoising diagnostic (Lukasik et al., section 4): the final model in eval mode over the "
                     "un-augmented training split, accuracy (%) against the true labels overall, on the correctly "
                     "labelled and on the mislabelled samples, and the share (%) of mislabelled samples predicted "
                     "as their noisy label.")


DIAGNOSTIC_HEADINGS = {"train_overall": "overall", "train_correct": "correctly labelled",
                       "train_mislabelled": "mislabelled", "train_memorised": "memorised", "wall_min": "minutes"}


def _heading(column: str) -> str:
    return DIAGNOSTIC_HEADINGS.get(column, column.replace("best_", ""))


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
    metrics = [column for column, *_ in
               LAST_METRICS + BEST_METRICS + CALIBRATION_METRICS[1:] + DIAGNOSTIC_METRICS + COST_METRICS]
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
