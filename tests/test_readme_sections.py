"""The README's PyTorch and ONNX examples run as written. Each is read from README.md between
`<!-- example: NAME -->` and `<!-- /example -->`, or, until the section is in README.md, from
tests/README_NAME_section.md. Skipped when the example's libraries are not installed."""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def example(name: str) -> str:
    """The python block between the example's markers, from README.md when it has them, else the section file."""
    opening = f"<!-- example: {name} -->"
    pattern = re.compile(re.escape(opening) + r"\s*```python\n(.*?)```\s*<!-- /example -->", re.S)
    for path in (ROOT / "README.md", ROOT / "tests" / f"README_{name}_section.md"):
        text = path.read_text() if path.exists() else ""
        if opening in text:
            found = pattern.search(text)
            assert found, f"{path.name}: {opening} is not followed by one ```python block and <!-- /example -->"
            return found.group(1)
    raise AssertionError(f"no {opening} in README.md or tests/README_{name}_section.md")


@pytest.mark.parametrize("name, needs", [("torch", ["torch"]), ("onnx", ["onnx", "onnxruntime"])])
def test_the_readme_example_runs(name, needs, tmp_path, monkeypatch, capsys):
    for module in needs:
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # the ONNX example writes model.onnx
    exec(compile(example(name), f"<README example: {name}>", "exec"), {"__name__": f"readme_{name}"})
    assert capsys.readouterr().out
