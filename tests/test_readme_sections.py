"""The README's PyTorch, ONNX and sequence examples run as written. Each is read from README.md between
`<!-- example: NAME -->` and `<!-- /example -->`. Skipped when the example's libraries are not installed."""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def example(name: str) -> str:
    """The python block between the example's markers in README.md."""
    opening = f"<!-- example: {name} -->"
    pattern = re.compile(re.escape(opening) + r"\s*```python\n(.*?)```\s*<!-- /example -->", re.S)
    text = (ROOT / "README.md").read_text()
    assert opening in text, f"no {opening} in README.md"
    found = pattern.search(text)
    assert found, f"README.md: {opening} is not followed by one ```python block and <!-- /example -->"
    return found.group(1)


@pytest.mark.parametrize("name, needs", [("torch", ["torch"]), ("onnx", ["onnx", "onnxruntime"]), ("lstm", [])])
def test_the_readme_example_runs(name, needs, tmp_path, monkeypatch, capsys):
    for module in needs:
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # the ONNX example writes model.onnx
    exec(compile(example(name), f"<README example: {name}>", "exec"), {"__name__": f"readme_{name}"})
    assert capsys.readouterr().out


def test_the_readme_lstm_example_learns_and_shows_the_gradient_through_time(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(example("lstm"), "<README example: lstm>", "exec"), {"__name__": "readme_lstm"})
    lines = capsys.readouterr().out.splitlines()
    assert float(lines[0].split()[1]) > 0.9
    assert len(lines[1].split()) == 5 and lines[2] == "(5, 20, 32) (2, 5, 32)"
