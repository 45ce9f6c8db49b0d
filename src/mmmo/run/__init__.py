"""The run folder: the journal and its events, the documents a run scores, the trial record, and the one-writer lock."""
