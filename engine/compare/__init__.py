"""`compare`: one row per model of one or more runs, the validation-loss curves, a report. No torch import.

    rows.py     the model rows, sized by engine.shapes; read by engine.contract.compare_rows (ModelRow,
                curves), their cells and quality-vs-speed points engine.contract.compare_cells (the TUI's too)
    tables.py   the loss and 'which student?' tables, samples
    charts.py   loss curves and quality vs speed
    frontier.py each search student's Pareto frontier (engine.contract.frontier), the chosen point marked
    report.py   `slimlab-engine compare` itself
"""

from engine.compare.report import compare
from engine.compare.rows import model_rows, param_count

__all__ = ["compare", "model_rows", "param_count"]
