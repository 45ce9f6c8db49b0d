"""The models a merge reads and writes: checkpoints on disk (`checkpoint`), layer groups in tensor names
(`layers`), the task vectors loaded once per search (`task_vectors`) and the live model each merge is written
into (`live_model`)."""
