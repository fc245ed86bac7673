"""Run the investigator notebooks headless and keep the committed ones clean.

``execute`` runs a notebook in a fresh kernel with parameters injected the
way papermill does it: the cell tagged ``parameters`` keeps its defaults and
a cell tagged ``injected-parameters`` is inserted right after it with the
overrides, so a saved notebook shows both and the notebooks stay runnable by
papermill itself. A name that the parameters cell does not define is
refused, so a typo cannot silently run the defaults.

``strip_outputs`` / ``stored_outputs`` keep outputs (rendered tables, images
with raw identifiers) out of git. nbformat and nbclient come with the
``notebooks`` extra and are imported only here.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def load(path: str | Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parameter_names(nb) -> list[str]:
    """The names the ``parameters`` cell assigns, in order (raises when there is not exactly one)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in _tags(c)]
    if len(cells) != 1:
        raise ValueError(f"expected one code cell tagged {PARAMETERS_TAG!r}, found {len(cells)}")
    names = []
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def inject_parameters(nb, params: dict[str, Any]):
    """A copy of ``nb`` with an ``injected-parameters`` cell after the ``parameters`` cell.

    Values are written with ``repr`` (str, int, float, bool, None, lists/dicts of those).
    """
    import copy

    import nbformat

    known = parameter_names(nb)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown notebook parameters {unknown}; the parameters cell defines {known}")
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if INJECTED_TAG not in _tags(c)]
    at = next(i for i, c in enumerate(out.cells) if PARAMETERS_TAG in _tags(c))
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source=source, metadata={"tags": [INJECTED_TAG]})
    out.cells.insert(at + 1, cell)
    return out


def execute(path: str | Path, params: dict[str, Any] | None = None, *, cwd: str | Path | None = None,
            timeout: int = 600, kernel_name: str = "python3"):
    """Run the notebook at ``path`` with ``params`` injected; return the executed notebook.

    Any cell error raises ``nbclient.exceptions.CellExecutionError`` naming the
    cell. The kernel starts in ``cwd`` (default: the notebook's folder, as in Jupyter).
    """
    from nbclient import NotebookClient

    nb = inject_parameters(load(path), params or {})
    workdir = str(cwd or Path(path).resolve().parent)
    NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                   resources={"metadata": {"path": workdir}}).execute()
    return nb


def stored_outputs(nb) -> list[int]:
    """Indices of code cells that carry outputs or execution counts."""
    return [i for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def strip_outputs(nb):
    """Clear outputs, execution counts and execution timing metadata in place; return ``nb``."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb
