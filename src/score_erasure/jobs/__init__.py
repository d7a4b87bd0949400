"""Jobs: what one command does from names to files (erase, evaluate, bench, attack, certify).

The orchestration layer: it resolves models once (`models.resolve_model`), runs methods, attacks, evaluations and
certificates on them, and writes the output folders. Nothing below it writes a run's folder layout.
"""
