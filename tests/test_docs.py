"""Every fenced ``python`` and ``bash``/``sh``/``shell`` snippet of README.md and docs/*.md runs.

Python snippets run in a subprocess, bash snippets with ``bash -e``; both in a fresh temporary
directory with PYTHONPATH set to this checkout, all with one artifact cache (``$BIDL_ARTIFACTS``; for a
snippet that names ``artifacts`` itself, ``./artifacts`` is a link to it). ``pip install`` lines are
skipped. A snippet preceded by ``<!-- not run: REASON -->`` is not run (the README's
install-and-run-everything commands): such skips are few and each names its reason. Snippets that
start Ray (``bidl-run``), train, compile or otherwise take more than a few seconds are ``slow``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from compile.cache_dir import ARTIFACTS_ENV

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
# what makes a snippet slow: Ray (bidl-run), training, compiling, a forward through a ResNet
SLOW = re.compile(r"bidl-run|bidl-train|bidl-test|bidl-compile|compile_spec|torchrun|ResNetLif|load_model|plan\.table|bidl-plan")
TIMEOUT_S = {"fast": 120, "slow": 900}


@dataclass
class Snippet:
    path: Path
    line: int            # 1-based line of the opening fence
    lang: str
    code: str
    skip: Optional[str]  # the reason it is not run

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def slow(self) -> bool:
        return bool(SLOW.search(self.code))


def snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for path in DOCS:
        lines = path.read_text().split("\n")
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m or not m.group(2):
                i += 1
                continue
            indent, lang = m.group(1), m.group(2)
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
            if lang in LANGS:
                prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
                why = NOT_RUN.search(prev)
                out.append(Snippet(path, i + 1, LANGS[lang], "\n".join(body) + "\n", why.group(1) if why else None))
            i = j + 1
    return out


SNIPPETS = snippets()


def runnable(code: str, lang: str) -> str:
    """``code`` without its ``pip install`` lines (no-ops here)."""
    if lang != "bash":
        return code
    return "\n".join(":  # pip line skipped" if re.match(r"\s*(python -m )?pip3? install\b", ln) else ln
                     for ln in code.split("\n"))


def params():
    return [pytest.param(s, id=s.id, marks=[pytest.mark.slow] if s.slow else []) for s in SNIPPETS]


def test_the_docs_have_snippets_and_few_documented_skips():
    langs = {s.lang for s in SNIPPETS}
    assert langs == {"python", "bash"} and len(SNIPPETS) >= 10, [s.id for s in SNIPPETS]
    skipped = [s for s in SNIPPETS if s.skip is not None]
    assert len(skipped) <= 2, [(s.id, s.skip) for s in skipped]
    assert all(len(s.skip) >= 10 for s in skipped), [(s.id, s.skip) for s in skipped]
    readme = [s for s in SNIPPETS if s.path.name == "README.md"]
    assert readme[0].skip and "python -m pytest -q tests" in readme[0].code, "the README's two commands come first"


def test_fences_are_closed_and_output_uses_text():
    for path in DOCS:
        fences = [ln for ln in path.read_text().split("\n") if ln.strip().startswith("```")]
        assert len(fences) % 2 == 0, f"{path.name}: an unclosed fence"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """One artifact cache and store for every snippet (each compiles the default model only once)."""
    d = tmp_path_factory.mktemp("docs-shared")
    (d / "artifacts").mkdir()
    return d


@pytest.mark.parametrize("snippet", params())
def test_snippet_runs(snippet: Snippet, tmp_path, shared):
    if snippet.skip is not None:
        pytest.skip(f"not run: {snippet.skip}")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg", BIDL_ARTIFACT_STORE=str(shared / "store"))
    names_the_cache = "artifacts" in snippet.code      # --out artifacts, ls artifacts: its cwd's, shared by a link
    if names_the_cache:
        env.pop(ARTIFACTS_ENV, None)
        (tmp_path / "artifacts").symlink_to(shared / "artifacts")
    else:                                               # artifacts are keyed by content and sealed: safe to share
        env[ARTIFACTS_ENV] = str(shared / "artifacts")
    code = runnable(snippet.code, snippet.lang)
    cmd = [sys.executable, "-c", code] if snippet.lang == "python" else ["bash", "-e", "-c", code]
    timeout = TIMEOUT_S["slow" if snippet.slow else "fast"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{snippet.id} exited {r.returncode}\n{code}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    long = [ln for ln in r.stdout.split("\n") if len(ln) > 400]
    assert not long, f"{snippet.id} printed a {len(long[0])}-character line"
    assert names_the_cache or not (tmp_path / "artifacts").exists(), f"{snippet.id}: {ARTIFACTS_ENV} ignored"
