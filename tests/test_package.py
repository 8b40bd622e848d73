"""The package's front: its version, the public names importable from ``seqmem`` itself, and the API reference
that documents them."""

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import seqmem

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_distributions():
    assert re.fullmatch(r"\d+\.\d+\.\d+", seqmem.__version__)
    assert importlib.metadata.version("seqmem") == seqmem.__version__


@pytest.mark.parametrize("name", [name for name in seqmem.__all__ if name != "__version__"])
def test_every_top_level_name_is_the_object_its_module_defines(name):
    home = seqmem._EXPORTS[name]
    assert getattr(seqmem, name) is getattr(importlib.import_module(home), name)
    assert name in dir(seqmem)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'SequenceModle'"):
        seqmem.SequenceModle


def test_importing_the_package_imports_nothing_heavy():
    # The public names load on first use: `import seqmem` alone must not pay for torch, Lightning or Ray.
    code = "import sys, seqmem; print(sorted(m for m in ('torch', 'lightning', 'ray') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_api_reference_documents_every_public_name():
    # docs/api.rst documents each module once; a name importable from seqmem must live in one of them.
    documented = set(re.findall(r"^\.\. automodule:: (\S+)", (REPO_ROOT / "docs" / "api.rst").read_text(), re.M))
    for name, home in seqmem._EXPORTS.items():
        assert home in documented, f"{name} lives in {home}, which docs/api.rst does not document"
        module = importlib.import_module(home)
        assert name in getattr(module, "__all__", [name]), f"{home} does not list {name} in its __all__"
