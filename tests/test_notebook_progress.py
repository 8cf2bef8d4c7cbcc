"""Progress in a notebook reads as progress: plain output, while problems still show in red.

A tiny notebook logs a step through :mod:`maas.progress`, a warning, and then fails. papermill
runs it with the same options as the pipeline's stages in ``dvc.yaml``: the executed notebook
must hold the progress lines in ``stdout`` streams (JupyterLab shows ``stderr`` in a red box),
the warning in ``stderr`` and the failure as an error; the console, which is what ``dvc repro``
shows, must carry all of them as they came.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import nbformat
import yaml
from conftest import PROJECT_KERNEL, ROOT

CELLS = [
    "import logging\nfrom maas import progress\nprogress.configure()",
    'with progress.step("tidy the corpus"):\n    pass\n'
    'logging.getLogger("maas.data").warning("3 posts are empty")',
    'raise ValueError("no such column: label")',
]


def stage_options() -> list[str]:
    """The papermill options of the data stage in ``dvc.yaml``, after its two notebook paths."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    command = shlex.split(stages["data"]["cmd"])
    assert command[0] == "papermill"
    options = command[3:]
    cwd = options.index("--cwd")
    return options[:cwd] + options[cwd + 2 :]  # the tiny notebook runs where it lies


def test_progress_is_output_and_problems_are_errors_in_notebook_and_console(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.metadata["kernelspec"] = {
        "name": PROJECT_KERNEL, "display_name": "Python (maas)", "language": "python"}  # fmt: skip
    source, executed = tmp_path / "tiny.ipynb", tmp_path / "tiny-out.ipynb"
    nbformat.write(notebook, source)
    options = [o if o != "../params.yaml" else "params.yaml" for o in stage_options()]
    console = subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(executed), *options],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert console.returncode != 0, "the failing cell should fail the run"

    cells = nbformat.read(executed, as_version=4).cells
    outputs = [o for cell in cells if cell.cell_type == "code" for o in cell.outputs]
    streams = {"stdout": "", "stderr": ""}
    for output in outputs:
        if output.output_type == "stream":
            streams[output.name] += output.text
    assert "tidy the corpus ..." in streams["stdout"]
    assert "tidy the corpus: done in " in streams["stdout"]
    assert "tidy the corpus" not in streams["stderr"]
    assert "3 posts are empty" in streams["stderr"] and "3 posts" not in streams["stdout"]
    errors = [o for o in outputs if o.output_type == "error"]
    assert [(e.ename, e.evalue) for e in errors] == [("ValueError", "no such column: label")]

    for line in ("tidy the corpus ...", "tidy the corpus: done in ", "3 posts are empty"):
        assert line in console.stdout, console.stdout + console.stderr
    assert "no such column: label" in console.stdout + console.stderr
