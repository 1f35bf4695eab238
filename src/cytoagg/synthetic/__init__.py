"""Built-in data: the synthetic compound screen (CellProfiler-like SQLite plates) and the toy classes of the
model-capacity experiments."""
