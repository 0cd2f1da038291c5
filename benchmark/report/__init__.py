"""``bench report``: every run's result.json -> comparison tables and charts.

Per dataset (and backbone), one row per experiment (a method and its settings) with mean +- std over
seeds of F1, mA, accuracy, precision and recall (in %), trainable parameters, peak training and
inference memory, GFLOPs per clip, training throughput and inference latency; as Markdown, CSV (full
precision, so the numbers equal those in the run files) and LaTeX (booktabs). A per-attribute F1 table,
and charts as PNG and SVG: F1 vs trainable parameters (log x, Pareto front), F1 vs peak training
memory, inference latency, a per-attribute F1 heat map, and training curves (a panel per row as well, where
more than four rows' would cross on one axes). Broken or failed run files are listed and skipped, never fatal.

One module per part: ``runs`` reads the result files into tables, ``experiments`` decides what a row is and how
it is labelled, ``tables`` averages over seeds and formats, ``notes`` says how each column was measured and what
a table's doubts are, ``charts`` draws, ``write`` builds the report and moves it into ``--out``.
"""

from benchmark.report.notes import SCORES_NOTE
from benchmark.report.runs import Runs, load_runs
from benchmark.report.write import write_report

__all__ = ["SCORES_NOTE", "Runs", "load_runs", "write_report"]
