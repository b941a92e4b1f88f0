"""The README's Python code blocks run as written (on a tiny trained workdir in place of
runs/calvin-small) and print what they say they print."""

import contextlib
import io
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(section: str) -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_python_api_blocks_run(tiny_run):
    blocks = python_blocks("Python API")
    assert len(blocks) >= 2
    namespace = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block.replace("runs/calvin-small", tiny_run), "README.md", "exec"),
                 namespace)
    lines = printed.getvalue().splitlines()
    # The tiny config: 16x16 frames, 8 context + 16 imagined frames, one compilation.
    assert "(1, 24, 16, 16, 3) 1" in lines, lines
    assert any(line.startswith("streamed 8 frames") for line in lines), lines
