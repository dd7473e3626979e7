"""Search: the student described by its budget (`[[prune]] method = "search"`).

The candidates and the budget are shapes (engine/shapes/candidates.py, budget.py: torch-free, `check`
and the TUI enumerate candidates through them); scoring.py scores candidates inside the prune stage
(engine/prune/search_part.py); table.py writes search.json (read by engine/contract/search_table.py,
its Pareto frontier by engine/contract/frontier.py: the TUI reads both through the contract);
audit.py sums up the audit (`audit = N`: the best candidates distilled in full, engine/prune/audit_part.py;
torch-free); speed_budget.py narrows the candidates to a speed budget (torch-free), with cost_model.py (fitted to timed
shapes) and speed_timing.py (the timing).
"""
