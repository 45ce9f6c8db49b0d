"""Where and how candidates are scored: the candidate evaluator, the in-process and Ray pools, hub models as folders."""
