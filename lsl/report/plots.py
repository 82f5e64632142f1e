"""The report's plots: metrics against alpha, one panel per noise model and rate; memorisation per epoch.

matplotlib is imported by the functions that draw, not with this module.
"""

from __future__ import annotations

from pathlib import Path

from lsl.report.runs import METHOD_ORDER, GroupSummary, sort_key

EXTRA_STYLES = ("-.", ":", (0, (5, 1, 1, 1, 1, 1)))


def plot_against_alpha(summaries: list[GroupSummary], metric: str, best_metric: str | None, ylabel: str,
                       scale: float = 1.0, extra_metrics: tuple[tuple[str, str], ...] = ()):
    """One panel per noise model and rate, one line per method: the metric against alpha (cross-entropy is LS at 0).

    The last epoch is solid; the best noisy-validation epoch, when given, dashed; each of ``extra_metrics``
    (``(column, legend text)``, e.g. the ECE after a temperature scaling) in a style of its own. A method with no
    alpha (FC, BC with the data's T) is a horizontal line per metric but the best epoch's, in the metric's style.
    Returns None when nothing has an alpha.
    """
    import matplotlib.pyplot as plt

    classifiers = [s for s in summaries if s.description["method"] != "KD" and s.mean(metric) is not None]
    panels = sorted({_panel(s) for s in classifiers}, key=sort_key)
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
            _plot_series(axis, method, series, _lines(metric, best_metric, extra_metrics), scale)
        axis.set_title(_panel_title(noise, rate))
        axis.set_xlabel("alpha")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _lines(metric: str, best_metric: str | None, extra_metrics: tuple[tuple[str, str], ...]) -> list[tuple]:
    """``(column, line style, legend text)`` of each line a method gets."""
    lines = [(metric, "-", "last epoch")] + ([(best_metric, "--", "best val")] if best_metric else [])
    return lines + [(column, EXTRA_STYLES[index % len(EXTRA_STYLES)], what)
                    for index, (column, what) in enumerate(extra_metrics)]


def _plot_series(axis, method: str, series: list[GroupSummary], lines: list[tuple], scale: float) -> None:
    with_alpha = sorted((s for s in series if s.description["alpha"] is not None), key=lambda s: s.description["alpha"])
    if method == "LS" and any(s.description["method"] == "CE" for s in series):
        method = "LS (alpha 0: CE)"
    if len(with_alpha) > 1 or (with_alpha and method.startswith(("LS", "CE"))):
        for name, style, what in lines:
            points = [(s.description["alpha"], scale * s.mean(name), scale * (s.std(name) or 0.0)) for s in with_alpha
                      if s.mean(name) is not None]
            if points:
                x, y, error = zip(*points)
                axis.errorbar(x, y, yerr=error, linestyle=style, marker="o", capsize=3, label=f"{method} ({what})")
    else:
        color = f"C{4 + METHOD_ORDER.index(method) if method in METHOD_ORDER else 9}"  # C0-C3: the LS lines
        for summary in series:
            for name, style, what in (line for line in lines if line[2] != "best val"):
                if summary.mean(name) is not None:
                    axis.axhline(scale * summary.mean(name), linestyle=style, label=f"{method} ({what})", color=color)


def plot_memorisation(summaries: list[GroupSummary]):
    """One panel per stage, noise model and rate: the share of mislabelled samples fitted to their noisy label, per epoch."""
    import matplotlib.pyplot as plt

    curves = [(s, s.memorisation_curve()) for s in summaries]
    curves = [(s, curve) for s, curve in curves if curve]
    if not curves:
        return None
    panels = sorted({(s.description["stage"], *_panel(s)) for s, _ in curves},
                    key=lambda panel: (panel[0] == "student", sort_key(panel)))  # a teacher before its student
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
    if description.get("transition"):
        text += f" (T: {Path(description['transition']).name})"
    if description["teacher"]:
        text += f" <- {description['teacher']}"
    return text


def _panel(summary: GroupSummary) -> tuple:
    """The noise a plot panel shows: its model and rate."""
    return summary.description["noise"], summary.description["rate"]


def _panel_title(noise: str, rate: float | None) -> str:
    return f"{noise} {rate:g}" if rate is not None else noise
