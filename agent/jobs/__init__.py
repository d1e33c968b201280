"""Jobs under per-pipeline quotas: the executor (tiers of enforcement), the queue, accounting."""
