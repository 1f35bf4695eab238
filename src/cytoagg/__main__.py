"""``python -m cytoagg <step>``: what the Snakemake rules run (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
