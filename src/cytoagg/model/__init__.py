"""The learned aggregation (CytoSummaryNet): the cell store, the set sampler, the Deep Sets network, its
losses, training, checkpoints and inference."""
