"""What a run found: its summary, paired comparisons, the take-home choice, report.md and plots, exports and re-scoring."""
