"""Checks of executed notebooks shared by the tests that run them."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat

FIGURE_CALL = "plots.show("


def figure_cells(path: Path) -> list:
    """The code cells of an executed notebook that draw a figure."""
    notebook = nbformat.read(path, as_version=4)
    return [c for c in notebook.cells if c.cell_type == "code" and FIGURE_CALL in c.source]


def assert_figures_rendered(path: Path, figures_dir: Path) -> list[str]:
    """Every figure cell of ``path`` shows a PNG, byte for byte the file it wrote.

    Returns the names of the figure files, so a caller can check which were drawn.
    """
    names = []
    for cell in figure_cells(path):
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        texts = [o for o in cell.outputs if "<Figure size" in str(o.get("data", {}))]
        assert len(images) == 1 and not texts, f"{path.name}: {cell.source!r} shows {cell.outputs}"
        name = images[0].metadata["maas"]["file"]
        shown = base64.b64decode(images[0].data["image/png"])
        assert shown[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name}: {name} is not a PNG"
        assert shown == (figures_dir / name).read_bytes(), f"{path.name}: {name} differs"
        names.append(name)
    return names
