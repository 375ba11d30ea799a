"""tools/mutation_check.py stays applicable: each of its planted faults names code that exists,
once, in the file it patches. (A refactor that moves the code would otherwise turn the check into
"patch not found" rows; running the check itself takes minutes and is not part of the suite.)"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tools" / "mutation_check.py")
mutation_check = importlib.util.module_from_spec(spec)
sys.modules["mutation_check"] = mutation_check  # its dataclasses look their module up
spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("patch", mutation_check.PATCHES, ids=lambda p: p.name)
def test_each_planted_fault_applies_once(patch):
    text = (ROOT / patch.path).read_text()
    assert text.count(patch.old) == 1, (
        f"{patch.name}: the code it patches occurs {text.count(patch.old)} times in {patch.path}; "
        "update tools/mutation_check.py to where the code lives now"
    )
    for test in patch.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{patch.name}: no test file {test}"
