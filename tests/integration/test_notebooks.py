"""The example notebooks (``examples/*.ipynb``) run top to bottom, and stay stored without outputs.

Each notebook is executed with nbclient in a fresh kernel that runs this interpreter
(``sys.executable``, i.e. the project's virtualenv, whatever kernelspecs the machine has), with a
temporary folder as its working directory.  Notebooks that load SmolLM2 are skipped when the
embedded model's package is not installed.
"""
import json
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
EXPECTED = {"01_quickstart", "02_kernel_regression", "03_icl_vs_gd", "04_linreg_lab", "05_bring_your_own_model"}
CELL_TIMEOUT_S = 300
KERNEL_NAME = "icl-interp-test"


def test_the_example_notebooks_are_there():
    assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"{path.name} cell {i} is stored with outputs: clear them before committing "
                "(Jupyter: Edit > Clear Outputs of All Cells, or `jupyter nbconvert --clear-output --inplace`)")


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory):
    """A kernelspec whose command is this interpreter, so the kernel sees the same packages."""
    from jupyter_client.kernelspec import KernelSpecManager

    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL_NAME
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "icl-interp test kernel", "language": "python",
    }))
    return KernelSpecManager(kernel_dirs=[str(root)])


def _needs_smollm2(path: Path) -> bool:
    return "smollm2-135m" in path.read_text()


def _takes_a_model(path: Path) -> bool:
    return "ICL_INTERP_MODEL" in path.read_text()


RUNS = [(p, None) for p in NOTEBOOKS] + [(p, "gemma3-270m") for p in NOTEBOOKS if _takes_a_model(p)]


@pytest.mark.parametrize("path, model", RUNS, ids=lambda x: x.stem if isinstance(x, Path) else (x or "default"))
def test_notebook_runs(path, model, tmp_path, kernel_spec_manager, monkeypatch):
    """Every notebook as stored; those that read ``$ICL_INTERP_MODEL`` also on Gemma 3 270M."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager

    if _needs_smollm2(path) or model:
        from interp.embedded import ensure_converted

        try:  # the one-off GGUF conversion happens here, not under a cell's timeout
            ensure_converted(model or "smollm2-135m")
        except ModuleNotFoundError as err:
            pytest.skip(str(err))
    if model:
        monkeypatch.setenv("ICL_INTERP_MODEL", model)  # the kernel inherits the environment

    nb = nbformat.read(path, as_version=4)
    probe = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
    nb.cells.insert(0, probe)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager)
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell raises
    finally:  # nbclient leaves a kernel it was handed running
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

    assert probe.outputs[0]["text"].strip() == sys.executable
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors
