"""Every notebook in notebooks/ runs from top to bottom and holds no library code.

Each notebook is executed in a fresh kernel (nbclient) from its own folder, as a reader would
run it; a cell that raises fails the test with the cell's source and the error.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
PRIVATE = re.compile(r"\b(from|import)\s+(bayeshlm\.|samplers)|\bbh\._")
README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            stripped = line.strip()
            # functions and classes belong in the library; private modules are not an API
            assert not stripped.startswith(("def ", "class ")), f"{path.name}: {stripped}"
            assert not PRIVATE.search(stripped), f"{path.name}: {stripped}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_linked_from_the_readme_and_committed_with_outputs(path):
    assert f"notebooks/{path.name}" in README
    nb = nbformat.read(path, as_version=4)
    assert any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
