"""`compare`: one row per model of one or more runs, the validation-loss curves, a report. No torch import.

    rows.py     ModelRow and reading the run directories
    tables.py   the loss and 'which student?' tables, samples
    charts.py   loss curves and quality vs speed
    frontier.py each search student's Pareto frontier (engine.contract.frontier), the chosen point marked
    report.py   `slimlab-engine compare` itself
"""

from engine.compare.report import compare
from engine.compare.rows import ModelRow, curves, load_run, model_rows, param_count

__all__ = ["ModelRow", "compare", "curves", "load_run", "model_rows", "param_count"]
