"""The Ray-free parts of restart, replay and clean failure: the journal file, sample and label admission,
the as-you-go verifier, the hang deadline, the restart limit, fault drills' parsing and one-line errors."""
import signal

import pytest
import torch

from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.driver.samples import Unreadable, admit, check_label
from bidl_runtime.cell.events import BusyClock
from bidl_runtime.driver.journal import Journal
from bidl_runtime.driver.reference import Verifier
from bidl_grid.command import one_line
from bidl_runtime.launch import parse_fault
from bidl_runtime.run import main

IDENT = {"config": "c", "model": "m", "data": "d"}


def test_journal_records_and_reloads_outputs_exactly(tmp_path):
    p = tmp_path / "j.jsonl"
    j = Journal.open(p, IDENT)
    y = torch.randn(1, 10)
    j.record(0, y, label=3)
    j.record(1, rejected="sample 1: shape [1]")
    j.close()
    j = Journal.open(p, IDENT)
    assert set(j.done) == {0, 1}
    assert torch.equal(j.output(0), y) and j.done[0]["label"] == 3   # float32 -> JSON -> float32 is exact
    assert j.output(1) is None and "shape" in j.done[1]["rejected"]
    j.close()


def test_journal_tolerates_a_cut_last_line_only(tmp_path):
    p = tmp_path / "j.jsonl"
    j = Journal.open(p, IDENT)
    j.record(0, torch.zeros(1, 2))
    j.record(1, torch.ones(1, 2))
    j.close()
    text = p.read_text()
    p.write_text(text[:-7])                      # a crash while writing the last record
    j = Journal.open(p, IDENT)
    assert set(j.done) == {0}
    j.record(1, torch.ones(1, 2))                # starts on a line of its own
    j.close()
    assert set(Journal.open(p, IDENT).done) == {0, 1}
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines[:1] + ["{garbage"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="line 2 is damaged"):
        Journal.open(p, IDENT)


def test_journal_of_another_run_or_not_a_journal_is_refused(tmp_path):
    p = tmp_path / "j.jsonl"
    Journal.open(p, IDENT).close()
    with pytest.raises(ValueError, match="belongs to another run: model is 'm' there, 'x' here"):
        Journal.open(p, dict(IDENT, model="x"))
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(ValueError, match="not a bidl-grid journal"):
        Journal.open(other, IDENT)


@pytest.mark.parametrize("label, ok", [(3, 3), (torch.tensor(4), 4), (torch.tensor([5]), 5), (None, None)])
def test_good_labels(label, ok):
    assert check_label(label, 10) == (ok, None)


@pytest.mark.parametrize("label, why", [("cat", "label 'cat'"), (2.0, "label 2.0"), (True, "label True"),
                                        (10, "0..9"), (-1, "0..9"), (torch.tensor([1, 2]), "label tensor"),
                                        (torch.tensor(1.0), "label tensor")])
def test_bad_labels_are_named(label, why):
    v, text = check_label(label, 10)
    assert v is None and why in text


def test_admission_names_every_kind_of_bad_sample():
    shape = (4, 2, 3, 3)
    x = torch.rand(shape)
    assert admit((x, 1), shape, 10)[2] is None and admit(x, shape, 10)[1] is None
    cases = [(torch.empty(shape, device="meta"), "meta-device"), (x.to_sparse(), "sparse"),
             (x.double(), "float64"), (x[:2], "shape"), ((x, 1, 2), "tuple of 3"), ("text", "torch.Tensor"),
             (Unreadable("item 5 cannot be read"), "item 5 cannot be read"), ((x, 11), "0..9")]
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    cases.append((nan, "NaN"))
    for item, why in cases:
        got = admit(item, shape, 10)[2]
        assert got is not None and why in got, (why, got)


class _Ref:
    """A reference whose output is the input's sum (as a [1] tensor)."""

    def output_of(self, x):
        return x.sum().reshape(1)


def test_verifier_checks_as_results_arrive_and_keeps_no_inputs():
    import gc
    import weakref
    v = Verifier(_Ref(), depth=2)
    refs = []
    for i in range(20):
        x = torch.full((3,), float(i))
        refs.append(weakref.ref(x))
        v.submit(i, x, x.sum().reshape(1) + (1.0 if i == 7 else 0.0))
        del x
    out = v.result()
    assert out == {"equal": 19, "compared": 20, "max_abs_diff": 1.0} and v.differ == [7]
    gc.collect()
    assert not any(r() is not None for r in refs), "inputs are dropped once checked"


def test_hang_deadline_is_derived_from_the_chunk_time():
    c = RuntimeConfig(hang_floor_s=5.0, hang_factor=4.0)
    assert c.hang_deadline(0.01) == 5.0 and c.hang_deadline(3.0) == 12.0
    for bad, key in ((dict(max_restarts=-1), "max_restarts"), (dict(max_restarts=1.5), "max_restarts"),
                     (dict(hang_factor=0.5), "hang_factor"), (dict(heartbeat_s=0), "heartbeat_s")):
        with pytest.raises(ValueError, match=key):
            RuntimeConfig(**bad)


def test_busy_clock_keeps_a_bounded_window():
    c = BusyClock(window=100)
    for i in range(1000):
        c.add(1.0)
    assert len(c.samples_ms) == 100 and c.busy_s == pytest.approx(1.0)


def test_fault_drills_parse_and_bad_ones_name_the_kinds():
    assert parse_fault("1,0:hang:4") == {(0, 1, 0): ("hang", 4)}
    with pytest.raises(ValueError, match="KIND one of .*'stall'"):
        parse_fault("1,0:explode:4")


def test_errors_are_one_line():
    from bidl_runtime.driver.grid import RunError
    assert one_line(RunError("cell[1,0]@dev2 failed:\n  the actor died")) == "cell[1,0]@dev2 failed: the actor died"
    assert one_line(KeyError("x")) == "KeyError: 'x' (--debug shows the traceback)"


def test_cli_flag_errors_exit_2_in_one_line_before_anything_starts(capsys):
    for argv, want in ((["--depth", "0"], "--depth 0"), (["--max-restarts", "-2"], "--max-restarts -2"),
                       (["--samples", "0"], "--samples 0"), (["--inject-fault", "9,9:exit:1"], "no cell (9, 9)")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and want in err[-1], err
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # main installed its SIGTERM handler


def test_a_command_called_from_python_gives_back_the_callers_signal_handling():
    """``main([...])`` of a command called from Python: whatever its teardown did to Ctrl-C and SIGTERM
    (ignored while it tears down), the caller's handlers are back afterwards, on success and on error; a
    process this one starts later would otherwise inherit SIGINT ignored (a Ctrl-C drill then hangs)."""
    import signal

    from bidl_grid.command import run_command

    def mine(signum, frame):   # the caller's own handlers
        pass

    def ignores_then(outcome):
        def main(argv):
            signal.signal(signal.SIGINT, signal.SIG_IGN)     # what a teardown's shield does
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if outcome == "error":
                raise ValueError("bad flag")
            return 0
        return main

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, mine)
        signal.signal(signal.SIGTERM, mine)
        assert run_command(ignores_then("ok"), ["--x"]) == 0
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        assert run_command(ignores_then("error"), ["--x"]) == 2
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)


INTERRUPTED_IN_EXEC = '''
import sys
from bidl_grid.command import run_command

def main(argv=None):
    try:
        exec("raise KeyboardInterrupt", {})    # an interrupt inside a string exec (torch's import has many)
    except KeyboardInterrupt:
        if sys.argv[1] == "caught":
            print("interrupted while importing", file=sys.stderr)
            return 130                           # what bidl-run's launch does after its teardown
        raise

sys.exit(run_command(main))
'''


@pytest.mark.parametrize("how", ["caught", "raised"])
def test_an_interrupted_command_exits_130_even_when_the_interrupt_hit_a_string_exec(how, tmp_path):
    """CPython remembers a KeyboardInterrupt that ended a string ``exec``/``eval`` (``PyRun_String``) and,
    under ``python -m``, ends the process by SIGINT at exit (-2) even though it was handled: a SIGTERM
    during torch's import did that to ``bidl-run`` now and then. The command exits 130, one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    (tmp_path / "interrupted_cmd.py").write_text(INTERRUPTED_IN_EXEC)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "interrupted_cmd", how], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == ["interrupted while importing" if how == "caught" else "interrupted"]
