"""Packaging: the torch / Ray floors (stated in pyproject, enforced at import and CLI start), the console
scripts' entry points and exit codes, and the package data a wheel must carry.

The wheel install itself (a clean venv, run from outside the repository) is ``.ci/wheel_check.sh``."""
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from bidl_grid import cli, versions
from bidl_grid.versions import MIN_RAY, MIN_TORCH, UnsupportedVersion

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TORCH_MIN = ".".join(map(str, MIN_TORCH))
RAY_MIN = ".".join(map(str, MIN_RAY))


def _below(v: tuple[int, ...]) -> str:
    return f"{v[0]}.{v[1] - 1}.9"


# ------------------------------------------------------------------------------ version floors

@pytest.mark.parametrize("text, want", [("2.13.0+cpu", (2, 13, 0)), ("2.7.0a0+git1a2b3c", (2, 7, 0)),
                                        ("2.52.0", (2, 52, 0)), ("2.6", (2, 6)), ("v3.0.1rc1", (3, 0, 1))])
def test_parse(text, want):
    assert versions.parse(text) == want


def test_parse_rejects_garbage():
    with pytest.raises(ValueError, match="'nightly'"):
        versions.parse("nightly")


def test_pyproject_floors_are_the_enforced_ones():
    deps = PYPROJECT["project"]["dependencies"]
    assert f"torch>={TORCH_MIN}" in deps
    assert f"ray[default]>={RAY_MIN}" in deps


@pytest.mark.parametrize("ok", [TORCH_MIN + ".0", "2.13.0+cpu", TORCH_MIN + ".0a0+gitabc", "3.0.0"])
def test_check_torch_accepts(ok):
    versions.check_torch(ok)


def test_check_torch_refuses_older_in_one_line():
    old = _below(MIN_TORCH)
    with pytest.raises(UnsupportedVersion) as e:
        versions.check_torch(old)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"torch>={TORCH_MIN}" in msg and f"torch {old}" in msg
    assert "download.pytorch.org/whl/cpu" in msg      # the CPU-only way to get a newer one
    assert isinstance(e.value, ImportError)


def test_check_ray_refuses_older_in_one_line():
    with pytest.raises(UnsupportedVersion) as e:
        versions.check_ray("2.52.1")
    msg = str(e.value)
    assert "\n" not in msg and f"ray>={RAY_MIN}" in msg and "ray 2.52.1" in msg and "token" in msg
    versions.check_ray(RAY_MIN + ".0")
    versions.check_ray("2.60.0")


def test_absent_or_unparsable_versions_pass():
    versions.require("torch", None, MIN_TORCH, "x")          # not installed: its own import fails later
    versions.require("torch", "local-build", MIN_TORCH, "x")


def test_installed_prefers_the_imported_module(monkeypatch):
    fake = type(sys)("torch")
    fake.__version__ = "2.9.1"
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert versions.installed("torch") == "2.9.1"
    with pytest.raises(UnsupportedVersion, match="torch 2.9.1"):
        versions.check_torch()


def test_installed_reads_metadata_without_importing():
    assert versions.installed("pytest") == pytest.__version__
    assert versions.installed("no_such_module_bidl") is None


def _import_with(module: str, fake: str, version: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import sys, types
        m = types.ModuleType({fake!r}); m.__version__ = {version!r}; sys.modules[{fake!r}] = m
        import {module}
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module, fake, version, want", [
    ("bidl_models", "torch", "2.9.1", f"bidl-grid needs torch>={TORCH_MIN}"),
    ("compile", "torch", "2.8.0", f"bidl-grid needs torch>={TORCH_MIN}"),
    ("bidl_runtime", "ray", "2.52.1", f"bidl-grid needs ray>={RAY_MIN}"),
])
def test_import_refuses_an_old_release(module, fake, version, want):
    """Importing the package with an old torch / Ray fails at once with the one-line ImportError (the
    old release is a stand-in module with that ``__version__``: nothing of it is used before the check)."""
    r = _import_with(module, fake, version)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bidl_grid.versions.UnsupportedVersion: " + want), r.stderr[-2000:]
    assert f"{fake} {version}" in last


# ------------------------------------------------------------------------------ console scripts

SCRIPTS = {"bidl-train": "bidl_models.train", "bidl-test": "bidl_models.evaluate", "bidl-compile": "compile.__main__",
           "bidl-run": "bidl_runtime.run", "bidl-plan": "bidl_runtime.plan.__main__"}


def test_console_scripts_declared():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for name, target in scripts.items():
        mod, func = target.split(":")
        assert mod == "bidl_grid.cli" and callable(getattr(cli, func)), name


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_runs_its_tools_main(name, monkeypatch):
    func = getattr(cli, PYPROJECT["project"]["scripts"][name].split(":")[1])
    seen = []
    monkeypatch.setattr(cli, "run_main", lambda module, argv=None: seen.append(module) or 0)
    assert func() == 0 and seen == [SCRIPTS[name]]
    import importlib
    assert callable(importlib.import_module(SCRIPTS[name]).main)


@pytest.fixture
def fake_tool(tmp_path, monkeypatch):
    """A module ``fake_bidl_tool`` whose ``main(argv)`` does what ``argv[0]`` says."""
    (tmp_path / "fake_bidl_tool.py").write_text(textwrap.dedent("""
        def main(argv):
            what = argv[0]
            if what == "dict": return {"accuracy_top-1": 99.0}
            if what == "code": return 3
            if what == "value": raise ValueError("config 'x': key 'y' expected an int")
            if what == "missing": raise FileNotFoundError("--checkpoint 'w.pth': no such file")
            if what == "interrupt": raise KeyboardInterrupt
            if what == "bug": raise RuntimeError("a real bug keeps its traceback")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fake_bidl_tool"


@pytest.mark.parametrize("what, code, err", [("dict", 0, ""), ("code", 3, ""),
                                             ("value", 2, "error: config 'x': key 'y' expected an int\n"),
                                             ("missing", 2, "error: --checkpoint 'w.pth': no such file\n"),
                                             ("interrupt", 130, "interrupted\n")])
def test_run_main_exit_codes(fake_tool, what, code, err, capsys):
    assert cli.run_main(fake_tool, [what]) == code
    assert capsys.readouterr().err == err


def test_run_main_bugs_are_one_line_and_debug_shows_the_traceback(fake_tool, capsys):
    assert cli.run_main(fake_tool, ["bug"]) == 1
    err = capsys.readouterr().err
    assert err == "error: RuntimeError: a real bug keeps its traceback (--debug shows the traceback)\n"
    with pytest.raises(RuntimeError, match="real bug"):
        cli.run_main(fake_tool, ["bug", "--debug"])


def test_run_main_refuses_old_versions_before_importing(monkeypatch, capsys):
    monkeypatch.setattr(versions, "installed", lambda module, dist=None: {"torch": "2.13.0", "ray": "2.52.1"}[module])
    assert cli.run_main("no_such_module_would_fail_to_import", []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: bidl-grid needs ray>={RAY_MIN}")


def test_real_tool_bad_config_exit_code(capsys):
    """bidl-test on a config that does not exist: exit code 2 and one error line naming it."""
    assert cli.run_main("bidl_models.evaluate", ["--config", "no_such_config_xyz", "--checkpoint", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_config_xyz" in err


# ------------------------------------------------------------------------------ package data

def test_package_data_covers_shipped_configs_and_weights():
    """Every file under bidl_models/configs and bidl_models/weights matches a package-data pattern (a
    wheel without them cannot run the default command)."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["bidl_models"]
    pkg = ROOT / "bidl_models"
    shipped = [p for d in ("configs", "weights") for p in (pkg / d).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.suffix == ".pth" for p in shipped) and any(p.suffix == ".py" for p in shipped)
    covered = {p for pat in patterns for p in pkg.glob(pat)}
    assert sorted(map(str, set(shipped) - covered)) == []


# ------------------------------------------------------------------------------ self-contained docs

def test_readme_links_stay_inside_the_repository():
    """The README relies on nothing outside the repository: every relative link resolves to a file here,
    and no path leaves the checkout (the semantics it relies on are in docs/semantics.md)."""
    import re
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t]
    assert "docs/semantics.md" in links
    assert [t for t in links if not (ROOT / t).exists()] == []
    assert "../" not in text and "shared/reference" not in text


def test_semantics_doc_names_real_code():
    """docs/semantics.md names the code of each part in [`...`]: those files and functions exist."""
    import re
    text = (ROOT / "docs" / "semantics.md").read_text()
    refs = [r for group in re.findall(r"\[(`[^\]]+`)\]", text) for r in re.findall(r"`([^`]+)`", group)]
    assert len(refs) >= 8
    sources = "".join(p.read_text() for p in (ROOT / "bidl_models").rglob("*.py"))
    for ref in refs:
        path, _, names = ref.partition(":")
        if "/" in path:
            target = ROOT / path if (ROOT / path).exists() else ROOT / "bidl_models" / path
            assert target.exists(), ref
        for name in filter(None, [names.strip()] if "/" in path else [path.strip()]):
            assert f"def {name}(" in sources, ref
