"""Issue 22's front door: cells forked from a template, the reference in processes of its own at idle
priority (the grid's figures are its own), compiled programs that load in milliseconds, the defaults
that pick them. Ray-free; the AOTInductor build is the one slow test."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bidl_runtime.driver.reference import Reference, ReferenceProcesses, ReferenceSpec, Verifier
from bidl_runtime.driver.report import verification_line
from bidl_runtime.runtime_config import RUN_BACKEND, RuntimeConfig, chunk_method
from conftest import glyph_samples, tiny_glyphs

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# ------------------------------------------------------------------------------------ defaults

def test_defaults_pick_the_fastest_verified_path():
    assert RUN_BACKEND == "compiled" and RuntimeConfig().chunk_compile == "auto"
    assert chunk_method("auto", "cpu") == "aoti" and chunk_method("auto", "cuda") == "graphs"
    assert chunk_method("auto", "cpu", "bf16") == "inductor", "a package is fp32: autocast takes Inductor"
    assert chunk_method("eager", "cpu") == "eager"
    assert RuntimeConfig(backend="compiled").context_options()["method"] == "aoti"
    assert RuntimeConfig(backend="cpu").context_options() == {}
    assert RuntimeConfig(verify_processes=3).reference_processes() == 3
    assert 1 <= RuntimeConfig(threads_per_cell=1).reference_processes() <= 4
    assert RuntimeConfig(threads_per_cell=1).reference_processes(forked=False) == 1
    with pytest.raises(ValueError, match="verify_pending_mb=0"):
        RuntimeConfig(verify_pending_mb=0)


def test_the_summary_says_what_verification_cost():
    line = verification_line({"processes": 2, "priority": "idle while streaming", "cpu_s": 3.25,
                              "after_streaming_s": 0.84, "stream_waited_s": 0.0})
    assert line.startswith("verification: 2 reference processes beside the grid at idle priority")
    assert "3.2 CPU s" in line and "finished 0.8 s after the last result" in line and "waited" not in line
    line = verification_line({"processes": 1, "priority": "after streaming", "cpu_s": 1.0,
                              "after_streaming_s": 2.0, "stream_waited_s": 1.5})
    assert "1 reference process after the grid had streamed" in line and "the stream waited 1.5 s" in line


# ------------------------------------------------------------------------------------ template

TEMPLATE_CHILD = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    from bidl_runtime.cell.template import CellTemplate
    from bidl_runtime.cell import template_client
    tpl = CellTemplate.fork(preload=("json",))
    assert tpl is not None and CellTemplate.active() is tpl
    worker = Path(sys.argv[1]) / "default_worker.py"
    worker.write_text("import os, sys, time\\n"
                      "print('worker', os.getppid(), os.getpid(), sys.argv[1], os.environ.get('FOO'), flush=True)\\n"
                      "time.sleep(float(sys.argv[2]))\\nsys.exit(int(sys.argv[1]))\\n")
    out = {"template": tpl.pid}
    r = subprocess.run([str(tpl.launcher), str(worker), "3", "0"], capture_output=True, text=True,
                       env=dict(os.environ, FOO="bar"))
    out["worker"] = [r.returncode, r.stdout.split()]
    r = subprocess.run([str(tpl.launcher), "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    out["other"] = r.stdout.strip()
    try:
        template_client.ask(str(tpl.socket), ["/bin/sh", "-c", "true"])
        out["refused"] = ""
    except OSError as e:
        out["refused"] = str(e)

    def alive(pid):
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    # a killed worker ends its launcher with its status; a killed launcher takes its worker with it
    p = subprocess.Popen([str(tpl.launcher), str(worker), "0", "60"], stdout=subprocess.PIPE, text=True)
    os.kill(int(p.stdout.readline().split()[2]), signal.SIGKILL)
    out["killed_worker"] = p.wait(timeout=30)
    p = subprocess.Popen([str(tpl.launcher), str(worker), "0", "60"], stdout=subprocess.PIPE, text=True)
    wpid = int(p.stdout.readline().split()[2])
    p.kill()
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and alive(wpid):
        time.sleep(0.05)
    out["orphan"] = alive(wpid)
    tpl.close()
    out["closed"] = not tpl.alive() and not tpl.directory.exists()
    print("RESULT " + json.dumps(out))
""")


def test_template_forks_workers_with_their_arguments_streams_and_environment(tmp_path):
    """The launcher hands Ray's worker command to the template, which forks it with the command's
    arguments, environment and streams; its exit status comes back; anything else runs the real
    interpreter; a worker dies with its launcher, and a launcher with its worker."""
    r = subprocess.run([sys.executable, "-c", TEMPLATE_CHILD, str(tmp_path)], capture_output=True, text=True,
                       env=ENV, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    code, words = out["worker"]
    assert code == 3 and words[:2] == ["worker", str(out["template"])] and words[3:] == ["3", "bar"], out["worker"]
    assert out["other"] == sys.executable, "a command other than Ray's worker runs the real interpreter"
    assert out["refused"] and "not a Ray worker command" in out["refused"]
    assert out["killed_worker"] == -signal.SIGKILL
    assert not out["orphan"], "a worker whose launcher is killed is killed too"
    assert out["closed"]


def test_no_template_once_ray_is_imported(tmp_path):
    code = ("import ray; from bidl_runtime.cell.template import CellTemplate; "
            "print('none' if CellTemplate.fork() is None else 'forked')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "none", r.stderr[-2000:]


# ------------------------------------------------------------------------------------ reference

@pytest.fixture(scope="module")
def plan_2x2(tiny_artifacts):
    """A 2x2 plan of the tiny default model, artifacts compiled, no Ray."""
    from bidl_runtime.api import GridJob
    from bidl_runtime.plan.place import Cluster
    job = GridJob(tiny_glyphs(6), grid="2x2", artifacts=tiny_artifacts)
    return job.plan(Cluster.local(4))


def test_reference_spec_travels_as_json(plan_2x2):
    spec = ReferenceSpec.of(plan_2x2, RuntimeConfig(threads_per_cell=1))
    again = ReferenceSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and spec.backend == "cpu" and spec.slices == (3, 3) and len(spec.programs) == 2 * 1
    assert spec.kind == "the same artifacts (exported programs)"
    compiled = ReferenceSpec.of(plan_2x2, RuntimeConfig(backend="compiled", threads_per_cell=1))
    assert compiled.method == "aoti" and compiled.kind == "the same compiled programs (aoti)"


@pytest.mark.parametrize("beside", [False, True])
def test_reference_processes_check_what_the_in_thread_verifier_checks(plan_2x2, beside):
    """The reference in processes of its own counts as the in-thread verifier does: every output
    compared, a wrong one named; then it reports its cost. By default (``beside=False``) no process
    starts before the stream has ended; beside, they start at once and compare as the samples come, at
    idle priority."""
    spec = ReferenceSpec.of(plan_2x2, RuntimeConfig(threads_per_cell=1))
    ref = Reference(spec)
    items = [x for x, _ in glyph_samples(6, 5, seed=2)]
    outs = [ref.output_of(x) for x in items]
    outs[3] = outs[3] + 0.5
    v = ReferenceProcesses(spec, processes=2, pending_mb=1, beside=beside)
    try:
        assert v.beside == (beside and v.idle)
        if v.beside:   # root here: they start at idle priority and get back to normal once streamed
            deadline = time.time() + 120
            while any(c.pid is None for c in v.children) and time.time() < deadline:
                time.sleep(0.05)
            assert len(v.children) == 2 and all(os.sched_getscheduler(c.pid) == os.SCHED_IDLE for c in v.children)
        for i, (x, y) in enumerate(zip(items, outs)):
            v.submit(i, x, y)
        if not v.beside:
            assert v.children == [], "the reference started before the stream ended"
        got = v.result()
    finally:
        v.close()
    thread = Verifier(ref)
    for i, (x, y) in enumerate(zip(items, outs)):
        thread.submit(i, x, y)
    assert got == thread.result() == {"equal": 4, "compared": 5, "max_abs_diff": pytest.approx(0.5)}
    assert v.differ == [3]
    cost = v.cost()
    assert cost["processes"] == 2 and cost["cpu_s"] > 0 and cost["after_streaming_s"] >= 0
    assert cost["priority"] == ("idle while streaming" if v.beside else "after streaming")
    assert all(c.proc.poll() == 0 for c in v.children)


def test_a_failed_reference_process_is_one_error_and_nothing_is_left(plan_2x2):
    from bidl_runtime.errors import RunError
    spec = ReferenceSpec.of(plan_2x2, RuntimeConfig(threads_per_cell=1))
    bad = ReferenceSpec(**{**spec.__dict__, "programs": ((0, 3, "/no/such/artifact"),) + spec.programs[1:]})
    v = ReferenceProcesses(bad, processes=1)
    try:
        x = glyph_samples(6, 1)[0][0]
        with pytest.raises(RunError, match="the reference run failed.*no such artifact directory"):
            v.submit(0, x, torch.zeros(1, 10))
            v.result()
    finally:
        v.close()
    assert all(c.proc.poll() is not None for c in v.children)


# ------------------------------------------------------------------------------------ compiled

AOTI_CHILD = """
import json, sys, time, torch
t = time.process_time()
from bidl_runtime.cell.compiled import CompiledChunk
c = CompiledChunk.load(sys.argv[1], "cpu", 1, "auto")
print(json.dumps({"cache": c.info["cache"], "method": c.method, "inductor": "torch._inductor" in sys.modules,
                  "export": "torch._export.serde.serialize" in sys.modules}))
"""


@pytest.mark.slow
def test_a_built_package_loads_without_inductor_and_the_reference_runs_it(plan_2x2):
    """The compiled backend's default (an AOTInductor package): built once, then a fresh process loads
    it without the exported program or Inductor; the reference of a compiled grid runs the cells'
    own program in their own context, so a grid output equals it bit for bit."""
    from bidl_runtime.cell.contexts import CompiledContext
    path = next(p for s, t, p in ReferenceSpec.of(plan_2x2, RuntimeConfig()).programs if s == 0)
    ctx = CompiledContext(0, 1, method="aoti")
    ctx.load(next(c.program for c in plan_2x2.cells if c.program.path == path))
    assert ctx.compile_info["cache"] in ("miss", "hit") and ctx.format == "aoti (cpu)"
    r = subprocess.run([sys.executable, "-c", AOTI_CHILD, path], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info == {"cache": "hit", "method": "aoti", "inductor": False, "export": False}, info
    spec = ReferenceSpec.of(plan_2x2, RuntimeConfig(backend="compiled", threads_per_cell=1))
    ref = Reference(spec)
    x = glyph_samples(6, 1, seed=4)[0][0]
    y = ref.output_of(x)
    cells = {}
    for c in plan_2x2.cells:   # the grid's cells, one after the other in this process
        k = CompiledContext(0, 1, method="aoti")
        k.load(c.program)
        cells[(c.row, c.col)] = k
    h_state = {}
    xb = x.unsqueeze(1)
    t0 = 0
    for g, t in enumerate(plan_2x2.slices):
        h = xb[t0:t0 + t]
        for s in range(plan_2x2.cols):
            st = h_state.get(s) or cells[(g, s)].reset_state()
            h, new = cells[(g, s)].execute(h, st)
            h = h.clone()
            h_state[s] = {k: v.clone() for k, v in new.items()}
        t0 += t
    assert torch.equal(h[-1], y)
    v = ReferenceProcesses(spec, processes=1)
    try:
        v.submit(0, x, h[-1])
        assert v.result() == {"equal": 1, "compared": 1, "max_abs_diff": 0.0}
    finally:
        v.close()
