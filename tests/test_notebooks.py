"""The investigator notebooks: committed clean, parameterisable, and running end to end.

Execution runs each notebook in its own kernel (one SparkSession per kernel,
as an investigator would) against the hand-made run folder of
``tests/runkit.py``; any cell error fails the test. Real runs cannot write
``rings/``/``risk/`` yet (GraphFrames jars unavailable), so the sample
world's outputs are not used here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from runkit import DS, write_run_folder

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from graph.notebooks import (  # noqa: E402
    INJECTED_TAG,
    execute,
    inject_parameters,
    load,
    parameter_names,
    stored_outputs,
    strip_outputs,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED_PARAMETERS = {
    "nightly_overview.ipynb": ["output_root", "ds", "top_n", "spark_master", "shuffle_partitions", "conf_path"],
    "ring_explorer.ipynb": ["output_root", "ds", "ring_id", "case_dir", "spark_master", "shuffle_partitions",
                            "conf_path"],
}


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_committed_notebooks_are_stripped_and_parameterised(name):
    nb = load(NOTEBOOKS / name)
    assert stored_outputs(nb) == [], f"{name} has stored outputs: run scripts/strip_notebooks.py"
    assert parameter_names(nb) == EXPECTED_PARAMETERS[name]
    # Every step beyond the session set-up is a call into graph.investigate.
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "investigate." in code and "def " not in code


def test_inject_parameters_like_papermill():
    nb = load(NOTEBOOKS / "ring_explorer.ipynb")
    out = inject_parameters(nb, {"ds": "2026-01-02", "ring_id": "R-1", "case_dir": None})
    at = next(i for i, c in enumerate(out.cells) if "parameters" in c.metadata.get("tags", []))
    injected = out.cells[at + 1]
    assert injected.metadata["tags"] == [INJECTED_TAG]
    assert injected.source == "# Injected parameters\nds = '2026-01-02'\nring_id = 'R-1'\ncase_dir = None\n"
    assert len(out.cells) == len(nb.cells) + 1
    # Injecting again replaces the earlier injection instead of stacking them.
    assert len(inject_parameters(out, {"ds": "x"}).cells) == len(nb.cells) + 1
    with pytest.raises(ValueError, match=r"unknown notebook parameters \['rind_id'\]"):
        inject_parameters(nb, {"rind_id": "R-1"})


def test_strip_outputs_clears_what_execution_stores():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", execution_count=3, outputs=[
        nbformat.v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=3)])])
    assert stored_outputs(nb) == [0]
    assert stored_outputs(strip_outputs(nb)) == []


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> str:
    return str(write_run_folder(tmp_path_factory.mktemp("notebook-run")))


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for o in _outputs(nb) if o.get("output_type") == "error"]


def _mimes(nb) -> list[str]:
    return [m for o in _outputs(nb) for m in o.get("data", {})]


@pytest.mark.slow
def test_nightly_overview_notebook_runs(run_root):
    nb = execute(NOTEBOOKS / "nightly_overview.ipynb",
                 {"output_root": run_root, "ds": str(DS), "shuffle_partitions": 2})
    assert _errors(nb) == []
    assert _mimes(nb).count("image/png") == 1
    html = "".join(o["data"].get("text/html", "") for o in _outputs(nb) if "data" in o)
    for ring in ("R-ct", "R-mule", "R-new", "R-gone"):
        assert ring in html


@pytest.mark.slow
def test_ring_explorer_notebook_runs(run_root, tmp_path):
    # ring_id None: the notebook opens the night's top ring (R-ct).
    nb = execute(NOTEBOOKS / "ring_explorer.ipynb",
                 {"output_root": run_root, "ds": str(DS), "case_dir": str(tmp_path), "shuffle_partitions": 2})
    assert _errors(nb) == []
    mimes = _mimes(nb)
    assert mimes.count("image/png") == 2  # the subgraph and the timeline
    assert "text/markdown" in mimes
    frames = [o["data"]["text/html"] for o in _outputs(nb) if "<iframe srcdoc=" in o.get("data", {}).get("text/html", "")]
    assert len(frames) == 1 and "vis-network" in frames[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"R-ct-{DS}-graph.html", f"R-ct-{DS}-graph.png", f"R-ct-{DS}-timeline.png", f"R-ct-{DS}.md"]
    assert (tmp_path / f"R-ct-{DS}.md").read_text().startswith(f"# Ring R-ct (card_testing) — night {DS}\n")
