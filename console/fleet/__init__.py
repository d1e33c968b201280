"""Fleet and host: the fleet table, the host screen (metrics, processes, GPUs) and `watchkeeper status`."""
