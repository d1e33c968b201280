"""Fleet data from Prometheus (`watchkeeper --prometheus URL`): PromQL for the table, agents for drill-down."""
