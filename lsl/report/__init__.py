"""Reports: ``lsl report logs/<sweep>`` turns a sweep's TensorBoard runs into tables and plots.

Runs that differ only in their seeds (grid keys with ``seed`` in their name) form a group; each group gets
the mean and sample standard deviation over its seeds of

- at the **last epoch**: ``test/acc``, ``test/ece``, ``test/nll``, and on the mislabelled training samples the
  share predicted as their noisy label and as their true label: from the end-of-fit un-augmented pass
  (``train_eval/memorised``, ``train_eval/acc_clean_mislabelled``) where a run logged it, else from the
  in-training counts (``train/memorised``, ``train/corrected``; the table's legend says which);
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

The package, one concept per module: :mod:`~lsl.report.describe` (what a run is),
:mod:`~lsl.report.runs` (reading runs, grouping them over seeds), :mod:`~lsl.report.tables`,
:mod:`~lsl.report.plots`, and :mod:`~lsl.report.command` (``lsl report``).
"""

from lsl.report.command import report_command, write_report
from lsl.report.describe import METHOD_NAMES, describe
from lsl.report.plots import plot_against_alpha, plot_memorisation
from lsl.report.runs import (
    BEST_METRICS,
    CALIBRATION_METRICS,
    COST_METRICS,
    DIAGNOSTIC_METRICS,
    LAST_METRICS,
    METHOD_ORDER,
    SELECTION_METRIC,
    GroupSummary,
    RunResult,
    Scalars,
    load_runs,
    read_scalars,
    run_metrics,
    summarise,
    truncated_events,
)
from lsl.report.tables import DESCRIPTION_COLUMNS, markdown_tables, write_csv

__all__ = ["BEST_METRICS", "CALIBRATION_METRICS", "COST_METRICS", "DESCRIPTION_COLUMNS", "DIAGNOSTIC_METRICS", "GroupSummary", "LAST_METRICS",
           "METHOD_NAMES", "METHOD_ORDER", "RunResult", "SELECTION_METRIC", "Scalars", "describe", "load_runs",
           "markdown_tables", "plot_against_alpha", "plot_memorisation", "read_scalars", "report_command",
           "run_metrics", "summarise", "truncated_events", "write_csv", "write_report"]
