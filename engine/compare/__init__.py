"""`compare`: one row per model of one or more runs, the validation-loss curves, a report. No torch import.

    (the model rows: engine.contract.compare_rows, ModelRow and curves; their cells and quality-vs-speed
     points: engine.contract.compare_cells; the TUI reads the same)
    tables.py   the loss and 'which student?' tables, samples
    charts.py   loss curves and quality vs speed
    frontier.py each search student's Pareto frontier (engine.contract.frontier), the chosen point marked
    report.py   `slimlab-engine compare` itself
"""

from engine.compare.report import compare

__all__ = ["compare"]
