"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = BLOCKS[index]
    namespace: dict[str, object] = {"__name__": f"readme_example_{index}"}
    exec(compile(code, f"README.md example {index + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    for expected in re.findall(r"# (.+)$", code, flags=re.MULTILINE):
        if expected.startswith("<") or expected[:1].isdigit():
            assert expected in printed, f"README promises {expected!r}; printed {printed!r}"
