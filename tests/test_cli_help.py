"""Every console script's flags have a help text, and its usage line names the console script
(``bidl-run``, not ``python -m ...``). The parsers are built in this process: nothing is run."""
import argparse
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# console script -> the module whose build_parser() it runs (bidl_grid.cli names the same modules)
PARSERS = {
    "bidl-train": "bidl_models.train",
    "bidl-test": "bidl_models.evaluate",
    "bidl-compile": "compile.__main__",
    "bidl-run": "bidl_runtime.run",
    "bidl-plan": "bidl_runtime.plan.__main__",
}


def test_every_console_script_is_covered():
    assert sorted(SCRIPTS) == sorted(PARSERS)
    cli = import_module("bidl_grid.cli")
    src = Path(cli.__file__).read_text()
    for script, module in PARSERS.items():
        entry = SCRIPTS[script].split(":")[1]
        assert callable(getattr(cli, entry)), script
        assert f'"{module}"' in src, (script, module)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_flag_has_help_and_usage_names_the_script(script):
    parser = import_module(PARSERS[script]).build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == script
    assert parser.format_usage().startswith(f"usage: {script} ")
    assert "python -m" not in parser.format_usage()
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == [], f"{script}: flags without help: {missing}"
    assert parser.description, script



# the flags whose default is the artifact cache: $BIDL_ARTIFACTS, else ./artifacts (compile.cache_dir)
CACHE_FLAGS = [("bidl_runtime.run", "--artifacts", "artifacts", []),
               ("compile.__main__", "--out", "out", ["--config", "c"]),
               ("compile.onnx_export", "--artifacts-root", "artifacts_root", []),
               ("bidl_runtime.plan.__main__", None, "artifacts", [])]   # bidl-plan: no flag, reads the recorded spec


@pytest.mark.parametrize("module,flag,dest,argv", CACHE_FLAGS, ids=[c[0] for c in CACHE_FLAGS])
def test_the_artifact_cache_defaults_to_the_env_var_and_the_flag_wins(module, flag, dest, argv, monkeypatch, tmp_path):
    from compile.cache_dir import ARTIFACTS_ENV, DEFAULT_ARTIFACTS
    build = import_module(module).build_parser
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    assert getattr(build().parse_args(argv), dest) == DEFAULT_ARTIFACTS
    monkeypatch.setenv(ARTIFACTS_ENV, "")                        # empty: unset
    assert getattr(build().parse_args(argv), dest) == DEFAULT_ARTIFACTS
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "env"))
    parser = build()
    assert getattr(parser.parse_args(argv), dest) == str(tmp_path / "env")
    if flag is None:
        assert f"${ARTIFACTS_ENV}" in parser.format_help()
        return
    assert getattr(parser.parse_args([*argv, flag, "given"]), dest) == "given"
    help_text = next(a.help for a in parser._actions if flag in a.option_strings)
    assert f"default: ${ARTIFACTS_ENV}, else {DEFAULT_ARTIFACTS}" in help_text
