"""The Python quick start of README.md runs as written (the fenced block after
the `python-quickstart` marker), with the installed package."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- python-quickstart[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python-quickstart block"
    return m.group(1)


@pytest.mark.skipif(not README.is_file(), reason="not run from a checkout")
def test_readme_quickstart_runs(capsys):
    code = quickstart()
    assert len(code.strip().splitlines()) <= 10
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    x, tokens = scope["x"], scope["tokens"]
    import numpy as np
    h = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_array_equal(tokens, np.argmax(h, axis=1))
    printed = capsys.readouterr().out
    assert printed.startswith("-2 cuda_softmax_topk: ") and "k" in printed
