"""The process a command runs in: one-line errors, quiet output, full disks, SIGTERM, caches, progress, dtypes."""
