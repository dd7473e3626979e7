"""Search: the student described by its budget (`[[prune]] method = "search"`).

budget.py and candidates.py are torch-free (`check` and the TUI enumerate candidates through
them); scoring.py scores candidates inside the prune stage (engine/prune/search_part.py).
"""
