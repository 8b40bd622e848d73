"""The measures are pure: no file of seqmem/measures imports Lightning, a logger, a figure or a callback."""

import ast
from pathlib import Path

import pytest

MEASURES = Path(__file__).resolve().parents[1] / "seqmem" / "measures"
# torch.utils.tensorboard is TensorBoard's writer: a logger.
FORBIDDEN = ("lightning", "pytorch_lightning", "matplotlib", "tensorboard", "torch.utils.tensorboard")
FORBIDDEN += ("seqmem.callbacks", "seqmem.plots", "seqmem.loggers")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_checker_sees_imports_at_any_depth(tmp_path: Path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import torch\ndef f():\n    from lightning.pytorch import Callback\n    import matplotlib.pyplot\n"
    )
    assert imported_modules(source) == {"torch", "lightning.pytorch", "lightning.pytorch.Callback", "matplotlib.pyplot"}


@pytest.mark.parametrize("path", sorted(MEASURES.glob("*.py")), ids=lambda path: path.name)
def test_a_measure_imports_no_lightning_logger_figure_or_callback(path: Path):
    bad = sorted(
        name
        for name in imported_modules(path)
        if any(name == forbidden or name.startswith(forbidden + ".") for forbidden in FORBIDDEN)
    )
    assert not bad, f"seqmem/measures/{path.name} imports {bad}"


def test_every_measure_file_is_checked():
    assert {path.name for path in MEASURES.glob("*.py")} >= {"__init__.py", "lyapunov.py", "norms.py", "timesteps.py"}
