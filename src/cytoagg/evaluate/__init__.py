"""Measuring profiles: replicate-retrieval average precision (copairs-exact), significance, per-plate
retrieval, summaries, the sampling sweep, diagnostics and the report's figures."""
