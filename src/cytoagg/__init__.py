"""cytoagg: learned (CytoSummaryNet-style) aggregation of Cell Painting single-cell profiles."""

__version__ = "0.1.0"
