"""Unix seconds <-> DuckDB TIMESTAMP without time-zone functions.

The store keeps naive UTC TIMESTAMPs. `to_timestamp()` and `SET TimeZone` go through ICU, which
costs the always-on agent ~3 MiB of resident memory for nothing; `make_timestamp(micros)` doesn't.
"""


def ts_from_unix(expr: str) -> str:
    """SQL turning an expression holding unix seconds (any numeric type) into a TIMESTAMP."""
    return f"make_timestamp(CAST(round(CAST({expr} AS DOUBLE) * 1000000) AS BIGINT))"
