"""The documents name only files that exist in the repo and cite nothing outside it; every JSON
file under results/ states its command, commit, device and date and is linked from BENCHMARKS.md.

A repo path is a token in a backtick span, a fenced code block or a link target whose first
component is a top-level package directory, `results` or `.ci` (placeholders such as runs/...,
/data/... or /my/... start elsewhere and are skipped, as are tokens with `<`, `*` or `{`), a root
document such as `BUILD.md`, or a module run as `python -m package.module`.
"""

import glob
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "BUILD.md", "BENCHMARKS.md")
# Spelled in pieces so that this file does not match itself.
FORBIDDEN = ("lessons" + ".md", "dreamer4" + "_spec", "shared" + "/docs", "spec" + " ambiguity")
SKIP_DIRS = {"runs", "build", "venv", "gpu_out", "__pycache__"}


def packages() -> set[str]:
    return {name for name in os.listdir(REPO)
            if os.path.isfile(os.path.join(REPO, name, "__init__.py"))}


def code_spans(text: str) -> list[str]:
    """Fenced code blocks, inline code spans (which may wrap lines) and link targets."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    rest = re.sub(r"```.*?```", " ", text, flags=re.S)
    return fenced + re.findall(r"`([^`]+)`", rest) + re.findall(r"\]\(([^)\s]+)\)", rest)


def paths_named(text: str, roots: set[str]) -> set[str]:
    """Repo-relative files and folders that `text` names (see the module docstring)."""
    found = set()
    for span in code_spans(text):
        for module in re.findall(r"python3? -m\s+([A-Za-z_][\w.]*)", span):
            parts = module.split(".")
            if parts[0] in roots and len(parts) > 1:
                found.add("/".join(parts) + ".py")
        for token in re.split(r"[\s=,;()\"'\[\]]+", span):
            token = token.split("::")[0].rstrip(".:")
            token = re.sub(r":\w+$", "", token)  # configs/calvin.py:full
            if not token or "://" in token or any(c in token for c in "<*{"):
                continue
            in_repo_dir = "/" in token and token.split("/")[0] in roots
            if in_repo_dir or re.fullmatch(r"[A-Z][A-Z_]*\.md|pyproject\.toml", token):
                found.add(token)
    return found


def test_paths_named_finds_repo_paths_and_skips_placeholders():
    text = ("Run `python -m launch.nope --x=1` and `python launch/run.py "
            "--config=configs/x.py:full --workdir=runs/a` (`tests/t.py::test_a`, `NOTES.md`);\n"
            "see [JSON](results/cpu/a.json), `/data/calvin`, `configs/<name>.py`, `eval/s.json`.\n"
            "```\npython -m dynamics.bench --json=results/b.json\n```\n")
    assert paths_named(text, {"launch", "configs", "tests", "results", "dynamics"}) == {
        "launch/nope.py", "launch/run.py", "configs/x.py", "tests/t.py", "NOTES.md",
        "results/cpu/a.json", "dynamics/bench.py", "results/b.json"}


@pytest.mark.parametrize("doc", DOCS)
def test_doc_paths_exist(doc):
    with open(os.path.join(REPO, doc)) as f:
        named = paths_named(f.read(), packages() | {"results", ".ci"})
    missing = sorted(p for p in named if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f"{doc} names paths that are not in the repo: {missing}"


def repo_files(*suffixes: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                   and not d.endswith(".egg-info")]
        files += [os.path.join(root, n) for n in names if n.endswith(suffixes)]
    return files


def test_nothing_cites_documents_outside_the_repo():
    offenders = []
    for path in [os.path.join(REPO, d) for d in DOCS] + repo_files(".py", ".json", ".sh"):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        offenders += [f"{os.path.relpath(path, REPO)}: {word!r}" for word in FORBIDDEN
                      if word in text]
    assert not offenders, offenders


def result_files() -> list[str]:
    return sorted(glob.glob(os.path.join(REPO, "results", "**", "*.json"), recursive=True))


def test_results_state_command_commit_device_date_and_are_linked():
    files = result_files()
    assert files, "results/ holds no JSON files"
    with open(os.path.join(REPO, "BENCHMARKS.md")) as f:
        benchmarks = f.read()
    for path in files:
        rel = os.path.relpath(path, REPO).replace(os.sep, "/")
        with open(path) as f:
            record = json.load(f)
        command = record.get("command")
        assert isinstance(command, str) or (
            isinstance(command, list) and command and all(isinstance(c, str) for c in command)
        ), f"{rel}: 'command' must be a string or a list of strings"
        assert re.fullmatch(r"[0-9a-f]{7,40}", str(record.get("commit"))), (
            f"{rel}: 'commit' must be a git commit hash")
        assert isinstance(record.get("device"), str) and record["device"], f"{rel}: no 'device'"
        assert re.match(r"\d{4}-\d{2}-\d{2}", str(record.get("date"))), (
            f"{rel}: 'date' must start with YYYY-MM-DD")
        assert "/tmp/" not in json.dumps(record), f"{rel} names a /tmp path"
        assert f"({rel})" in benchmarks, f"BENCHMARKS.md does not link {rel}"
