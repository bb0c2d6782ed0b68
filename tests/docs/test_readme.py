"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("upto", range(1, len(BLOCKS) + 1))
def test_readme_examples_run(upto):
    # Later blocks reuse the names defined by earlier ones.
    namespace = {}
    for block in BLOCKS[:upto]:
        exec(compile(block, str(README), "exec"), namespace)
    assert "y" in namespace
