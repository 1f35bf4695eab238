"""Per-plate preprocessing of single cells: normalization (statistics, and the streamed plate step) and
feature selection fit on the training plates."""
