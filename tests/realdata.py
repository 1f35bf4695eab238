"""Where the tests' real CellProfiler data lives (copied from ../shared/realdata; see each SOURCE.md)."""

from pathlib import Path

REALDATA = Path(__file__).parent / "data" / "realdata"


def fibrosis_plates() -> list[Path]:
    """The 4 fibrosis plates (real single cells, already normalized and feature-selected upstream; CC0)."""
    plates = sorted((REALDATA / "fibrosis_dmso_4plates").glob("*.parquet"))
    assert len(plates) == 4, f"expected the 4 fibrosis plates in {REALDATA / 'fibrosis_dmso_4plates'}"
    return plates
