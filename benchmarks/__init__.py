"""mmmo's benchmarks: a small library (problems, strategies, metrics, results, report) and scripts run with `python -m benchmarks.<script>`."""
