"""``lsl report SWEEP_DIR [--out DIR]``: read a sweep's runs, write its tables and plots.

TensorBoard, torch and matplotlib are imported by :func:`write_report` when it runs, so ``lsl report --help``
and a refused argument answer without them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lsl.errors import ConfigError
from lsl.report.plots import plot_against_alpha, plot_memorisation
from lsl.report.runs import has_temperatures, load_runs, summarise
from lsl.report.tables import markdown_tables, write_csv
from lsl.sweep import DONE_FILE, RUN_FILE

# The ECE after each post-hoc temperature scaling, beside the raw one.
SCALED_ECE_LINES = (("ece_noisy", "after noisy t"), ("ece_noise_aware", "after noise-aware t"),
                    ("ece_oracle", "after oracle t"))

if TYPE_CHECKING:
    import jsonargparse


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
               "ece_scaled_vs_alpha": plot_against_alpha(summaries, "ece", None, "test ECE (last epoch)",
                                                         extra_metrics=SCALED_ECE_LINES)
               if has_temperatures(summaries) else None,
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


def parser() -> jsonargparse.ArgumentParser:
    """The parser of ``lsl report``; its options can also come from a YAML file (``--config``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="lsl report", exit_on_error=False,
                            description="Tables (Markdown, CSV) and plots from a sweep's runs.")
    parser.add_argument("--config", "-c", action=ActionConfigFile, help="a YAML file of these options")
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder, logs/<sweep name>")
    parser.add_argument("--out", type=Optional[Path], default=None, help="where to write (default: <sweep_dir>/report)")
    return parser


def report_command(argv: list[str]) -> None:
    """``lsl report SWEEP_DIR [--out DIR]``."""
    options = parser().parse_args(argv)
    write_report(options.sweep_dir, options.out)
