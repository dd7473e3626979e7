"""Search: the student described by its budget (`[[prune]] method = "search"`).

budget.py and candidates.py are torch-free (`check` and the TUI enumerate candidates through
them); scoring.py and stage_part.py prune and score candidates inside the prune stage.
"""
