"""Jobs and quotas: the client and poll feed, rows, CLI verbs, the jobs (`j`) and quotas (`u`) screens."""
