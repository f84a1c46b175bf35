"""The GPU cell (issue 14) on CPU: the cuda transport's protocol (host-memory slots), the compiled
chunk (Inductor, disk cache, amp), the compiled device context, the planner's per-edge choice, the
``--backend cuda`` refusal, and a grid of compiled cells over cuda edges against the reference.
Tests that need a GPU skip with the reason; ``benchmarks/gpu/check.sh`` runs them on one."""
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bidl_runtime.channels import ChannelConfig, attach_sender, create_receiver
from bidl_runtime.channels.errors import ChannelTimeout
from bidl_runtime.cell.compiled import CompiledChunk, cache_key, read_sealed, write_sealed
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.cell.contexts import (CompiledContext, CpuContext, CudaUnavailable, cuda_problem,
                                  open_context)
from conftest import glyph_samples, tiny_glyphs
from test_channels import SPECS, _child_sender, assert_equal, make_tensors

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run benchmarks/gpu/check.sh on a GPU machine)")
no_gpu = pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without a GPU")
CTX = mp.get_context("spawn")
ROOT = Path(__file__).resolve().parents[1]
T = 4


@pytest.fixture(scope="module")
def arts(tiny_artifacts):
    """The tiny glyph model compiled for a 2x1 grid (two time slices of 2 steps), in the session's
    tiny-model artifacts (conftest)."""
    from bidl_runtime.api import GridJob
    return GridJob(tiny_glyphs(T), grid=(2, 1), artifacts=tiny_artifacts).artifacts()


def artifact_path(arts) -> str:
    return str(arts.records[0].path)


def program_of(arts):
    """The first artifact as a cell loads it (a compile.program.Program)."""
    r = arts.records[0]
    return arts.programs()[(r.segment, r.chunk_len)]


def chunk_inputs(path: str, seed: int = 0):
    from compile.artifact import load_artifact
    art = load_artifact(path)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((art.chunk_len, 1, *art.input_spec.shape[1:]), generator=g) < 0.4).float()
    return art, x, [s.with_batch(1).zeros() for s in art.state_specs]


# ------------------------------------------------------------------------------- cuda transport

def host_cfg(**kw) -> ChannelConfig:
    return ChannelConfig(transport="cuda", cuda_memory="host", **kw)


def test_cuda_transport_host_memory_roundtrip_across_processes():
    rx = create_receiver("t:cuda-xproc", SPECS, host_cfg(depth=2))
    desc = rx.descriptor
    assert desc.transport == "cuda" and desc.address["memory"] == "host" and "ipc" not in desc.address
    p = CTX.Process(target=_child_sender, args=(desc, 6, None))
    p.start()
    try:
        for i in range(6):
            with rx.recv(timeout=60) as msg:
                assert msg.meta["sample"] == i and msg.meta["note"] == f"m{i}"
                assert_equal(msg.tensors, make_tensors(i))
                lo, n = rx.buffer_range()
                assert lo <= msg.tensors["x"].data_ptr() < lo + n, "zero copy: a view of the shared slots"
        with rx.recv(timeout=30) as stop:
            assert stop.kind == "stop" and stop.meta["sample"] == 6
    finally:
        p.join(30)
        rx.close()
    assert p.exitcode == 0
    assert rx.stats.messages == 6


def test_cuda_transport_credits_and_event_field():
    rx = create_receiver("t:cuda-credits", SPECS, host_cfg(depth=2))
    tx = attach_sender(rx.descriptor)
    try:
        sent = []
        orig = tx._link.send
        tx._link.send = lambda msg, *a, **k: (sent.append(msg), orig(msg, *a, **k))[1]
        tx.send(make_tensors(0), {"sample": 0})
        tx.send(make_tensors(1), {"sample": 1})
        assert [len(m) for m in sent] == [7, 7] and [m[5] for m in sent] == [None, None], \
            "a data message carries the event handle field (None: host memory), then the grid epoch"
        with pytest.raises(ChannelTimeout):
            tx.send(make_tensors(2), {"sample": 2}, timeout=0.2)   # both slots unreleased
        m0 = rx.recv(timeout=5)
        assert_equal(m0.tensors, make_tensors(0))
        m0.release()
        tx.send(make_tensors(2), {"sample": 2}, timeout=5)
        for i in (1, 2):
            with rx.recv(timeout=5) as m:
                assert m.meta["sample"] == i
                assert_equal(m.tensors, make_tensors(i))
    finally:
        tx.close()
        rx.close()


def test_cuda_config_validates_memory():
    with pytest.raises(ValueError, match="cuda_memory='gpu'"):
        ChannelConfig(cuda_memory="gpu")


def _child_gpu_sender(desc, n: int) -> None:
    tx = attach_sender(desc)
    for i in range(n):
        tx.send({k: v.cuda() for k, v in make_tensors(i).items()}, {"sample": i})
    tx.send_control("stop")
    tx.close()


@needs_gpu
@pytest.mark.parametrize("events", [True, False])
def test_cuda_transport_gpu_roundtrip_across_processes(events):
    rx = create_receiver("t:cuda-gpu", SPECS, ChannelConfig(transport="cuda", depth=2, cuda_ipc_events=events))
    assert rx.descriptor.address["memory"] == "cuda"
    p = CTX.Process(target=_child_gpu_sender, args=(rx.descriptor, 6))
    p.start()
    try:
        for i in range(6):
            with rx.recv(timeout=60) as msg:
                assert msg.tensors["x"].is_cuda
                got = {k: v.cpu() for k, v in msg.tensors.items()}
                assert_equal(got, make_tensors(i))
        with rx.recv(timeout=30) as stop:
            assert stop.kind == "stop"
    finally:
        p.join(30)
        rx.close()
    assert p.exitcode == 0


# --------------------------------------------------------------------- config, planner, refusal

def test_runtime_config_gpu_options():
    assert RuntimeConfig(backend="cuda").channel("cuda").cuda_memory == "cuda"
    assert RuntimeConfig(backend="compiled").channel("cuda").cuda_memory == "host"
    assert RuntimeConfig(backend="cuda").channel("tcp").pin_memory
    assert not RuntimeConfig().channel("tcp").pin_memory
    assert RuntimeConfig().context_options() == {}
    assert RuntimeConfig(backend="compiled", chunk_compile="eager", amp="bf16").context_options() == \
        {"method": "eager", "cache": True, "amp": "bf16"}
    assert RuntimeConfig(backend="cuda", gpus_per_cell=0.25).actor_gpus() == 0.25
    assert RuntimeConfig(gpus_per_cell=0.25).actor_gpus() == 0.0
    for bad, match in ((dict(chunk_compile="fast"), "--chunk-compile 'fast'"), (dict(amp="fp8"), "--amp 'fp8'"),
                       (dict(gpus_per_cell=0), "--gpus-per-cell 0"), (dict(backend="gpu"), "--backend 'gpu'")):
        with pytest.raises(ValueError, match=match):
            RuntimeConfig(**bad)


def _plan(backend: str, transport: str, nodes=("local",) * 4, grid=(2, 2)):
    from bidl_models.model_spec import ModelSpec
    from bidl_runtime.plan.emulated import emulate
    from bidl_models.slicing import GridLayout, time_slices
    from bidl_runtime.plan.place import Cluster, place
    cfg = tiny_glyphs(T)
    layout = GridLayout.resolve(cfg, grid, 1)
    spec = ModelSpec.from_config(cfg, columns=layout.cols)
    return place(emulate(spec, time_slices(spec.T, layout.rows)), Cluster(tuple(nodes)), layout,
                 transport=transport, backend=backend)


def test_planner_picks_the_transport_per_edge():
    kinds = lambda plan: {(e.kind, e.transport) for e in plan.edges}   # noqa: E731
    one = _plan("cuda", "auto")
    assert kinds(one) == {("input", "shm"), ("activation", "cuda"), ("state", "cuda"), ("result", "shm")}
    # cells on two nodes: the state edge between nodes falls back to host copies over tcp
    two = _plan("cuda", "auto", nodes=("local", "local", "n2", "n2"))
    by_name = {e.name: e.transport for e in two.edges}
    assert {e.transport for e in two.edges if e.kind == "state"} == {"tcp"}
    assert {e.transport for e in two.edges if e.kind == "activation"} == {"cuda"}
    assert by_name["driver:result[0]"] in ("shm", "tcp")
    assert kinds(_plan("compiled", "auto")) == {("input", "shm"), ("activation", "shm"), ("state", "shm"),
                                                ("result", "shm")}
    assert ("state", "cuda") in kinds(_plan("compiled", "cuda"))
    assert kinds(_plan("cuda", "shm")) == {(k, "shm") for k in ("input", "activation", "state", "result")}
    with pytest.raises(ValueError, match="--transport cuda .* needs --backend cuda"):   # checked once: RuntimeConfig
        RuntimeConfig(backend="cpu", transport="cuda")


@no_gpu
def test_cuda_backend_refuses_at_once_without_gpu():
    assert cuda_problem() is not None
    with pytest.raises(CudaUnavailable, match="no GPU is visible|no CUDA device") as e:
        open_context("cuda", 0)
    assert "\n" not in str(e.value) and "--backend cpu" in str(e.value)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--backend", "cuda", "--samples", "2"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    took = time.perf_counter() - t
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --backend cuda:"), r.stderr
    assert "ray" not in r.stdout.lower(), "refused before starting Ray"
    assert took < 60


# --------------------------------------------------------------- compiled chunk and context

def test_sealed_cache_files(tmp_path):
    f = tmp_path / "device_cache" / "k.inductor.bin"
    assert read_sealed(f) is None
    write_sealed(f, b"compiled code")
    assert read_sealed(f) == b"compiled code"
    f.write_bytes(b"compiled c0de")
    assert read_sealed(f) is None, "altered: ignored"
    write_sealed(f, b"x")
    f.with_name(f.name + ".seal").write_text("0" * 64)
    assert read_sealed(f) is None, "foreign seal: ignored"
    a = cache_key("sha", "graphs", torch.device("cpu"), 1)
    assert len({a, cache_key("sha", "graphs", torch.device("cpu"), 2), cache_key("sha", "inductor", torch.device("cpu"), 1),
                cache_key("sha", "graphs", torch.device("cpu"), 1, "bf16"), cache_key("sha2", "graphs",
                                                                                   torch.device("cpu"), 1)}) == 5


def test_compiled_chunk_eager_and_refusals(arts):
    path = artifact_path(arts)
    art, x, st = chunk_inputs(path)
    c = CompiledChunk.load(path, "cpu", 1, "eager")
    with torch.inference_mode():
        got = c(x, *st)
    for a, b in zip(art(x, *st), got):
        assert torch.equal(a, b)
    assert c.info["method"] == "eager" and c.info["cache"] == "off"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CompiledChunk.load(path, "cpu", 1, "capture")
    with pytest.raises(ValueError, match="chunk_compile='jit'"):
        CompiledChunk.load(path, "cpu", 1, "jit")
    assert art.dynamic_batch
    c2 = CompiledChunk.load(path, "cpu", 2, "eager")          # a dynamic-batch artifact at batch 2
    x2 = torch.cat([x, torch.zeros_like(x)], dim=1)
    with torch.inference_mode():
        got2 = c2(x2, *[torch.cat([s, s]) for s in st])
    assert torch.allclose(got2[0][:, :1], got[0], atol=1e-6)   # another batch: another BLAS path


def test_compiled_chunk_amp_bf16_keeps_dtypes(arts):
    path = artifact_path(arts)
    art, x, st = chunk_inputs(path, seed=3)
    c = CompiledChunk.load(path, "cpu", 1, "eager", amp="bf16")
    with torch.inference_mode():
        got = c(x, *st)
        ref = art(x, *st)
    assert c.info["amp"] == "bf16"
    assert any(g.dtype == torch.bfloat16 for g in got) or any(not torch.equal(g.float(), r) for g, r in zip(got, ref)), \
        "autocast must have changed the arithmetic"
    ctx = CompiledContext(0, 1, method="eager", amp="bf16")
    ctx.load(program_of(arts))
    y, new = ctx.execute(x, dict(zip(ctx.state_names, st)))
    assert y.dtype == ref[0].dtype and [t.dtype for t in new.values()] == [t.dtype for t in ref[1:]], \
        "the channels see the manifest's dtypes"
    assert ctx.format == "eager+bf16 (cpu)"


def test_compiled_context_equals_cpu_context_over_chunks(arts):
    """The cuda backend's logic on CPU: resident input/state buffers, outputs in two alternating
    sets (chunk k's outputs intact while chunk k+1 runs), state carried between time slices."""
    cpu, comp = CpuContext(0, 1), open_context("compiled", 0, 1, method="eager", cache=False)
    cpu.load(program_of(arts))
    comp.load(program_of(arts))
    assert comp.format == "eager (cpu)" and comp.state_specs == cpu.state_specs
    s_cpu, s_comp = cpu.reset_state(), comp.reset_state()
    prev = None
    for k in range(4):
        x = (torch.rand((2, 1, 2, 16, 16), generator=torch.Generator().manual_seed(k)) < 0.4).float()
        y1, s_cpu = cpu.execute(x, s_cpu)
        y2, s_comp = comp.execute(x, s_comp)
        assert torch.equal(y1, y2) and all(torch.equal(s_cpu[n], s_comp[n]) for n in s_cpu)
        if prev is not None:
            assert torch.equal(prev[0], prev[1]), "the previous chunk's outputs are still intact"
            assert prev[1].data_ptr() != y2.data_ptr()
        prev = (y1.clone(), y2)
        s_cpu = {n: t.clone() for n, t in s_cpu.items()}
        s_comp = {n: t.clone() for n, t in s_comp.items()}


INDUCTOR_CHILD = """
import sys, json, torch
from bidl_runtime.cell.compiled import CompiledChunk
c = CompiledChunk.load(sys.argv[1], "cpu", 1, "inductor")
print(json.dumps({k: c.info[k] for k in ("cache", "compile_s")}))
"""


@pytest.mark.slow
def test_compiled_chunk_inductor_on_cpu_and_its_disk_cache(arts, tmp_path):
    """Inductor on CPU (the GPU path's compiler): close to eager; the sealed cache file lets a fresh
    process (empty Inductor cache) skip code generation."""
    path = artifact_path(arts)
    art, x, st = chunk_inputs(path, seed=1)
    c = CompiledChunk.load(path, "cpu", 1, "inductor")
    assert c.info["cache"] in ("miss", "hit")
    with torch.inference_mode():
        got, ref = c(x, *st), art(x, *st)
    diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
    assert diff < 1e-4, diff
    f = Path(c.info["cache_file"])
    assert read_sealed(f) is not None
    env = dict(os.environ, PYTHONPATH=str(ROOT), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    r = subprocess.run([sys.executable, "-c", INDUCTOR_CHILD, path], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import json
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["cache"] == "hit", info


@needs_gpu
def test_cuda_context_matches_cpu(arts):
    cpu, gpu = CpuContext(0, 1), open_context("cuda", 0, 1, method="capture")   # graphs: gpu_cell's |diff|
    cpu.load(program_of(arts))
    gpu.load(program_of(arts))
    s1, s2 = cpu.reset_state(), gpu.reset_state()
    for k in range(3):
        x = (torch.rand((2, 1, 2, 16, 16), generator=torch.Generator().manual_seed(k)) < 0.4).float()
        y1, s1 = cpu.execute(x, s1)
        y2, s2 = gpu.execute(x.cuda(), s2)
        assert float((y1 - y2.cpu()).abs().max()) < 1e-4
        s1 = {n: t.clone() for n, t in s1.items()}
        s2 = {n: t.clone() for n, t in s2.items()}


# ------------------------------------------------------------------------------- grid, end to end

@pytest.fixture(scope="module")
def cluster(ray_local):
    yield


@pytest.mark.parametrize("grid,batch", [((2, 2), 1), ((2, 1), 2)])
def test_compiled_grid_over_cuda_edges_equals_reference(cluster, tiny_artifacts, grid, batch):
    """Compiled cells (the cuda backend's code path) with every cell-to-cell edge on the cuda
    transport (host-memory slots): outputs equal to the single-device reference, per sample, in order."""
    from bidl_runtime.api import stream
    n = 5
    rcfg = RuntimeConfig(backend="compiled", transport="cuda", chunk_compile="eager", batch=batch, metrics=False)
    report = stream(tiny_glyphs(T), glyph_samples(T, n), grid=grid, rcfg=rcfg,
                    artifacts=tiny_artifacts, verify=True)
    assert report.verify["equal"] == n and report.verify["max_abs_diff"] == 0.0, report.verify
    assert list(report.outputs) == list(range(n))
    cell_edges = {e.transport for e in report.plan.edges if e.kind in ("state", "activation")}
    assert cell_edges == {"cuda"}
    assert all(c["format"] == "eager (cpu)" for c in report.cells)


@pytest.mark.parametrize("backend,method,batch", [
    ("compiled", "eager", 1), ("compiled", "eager", 2),
    pytest.param("cuda", "graphs", 2, marks=needs_gpu)])
def test_compiled_cells_cut_inside_a_block_take_x_and_its_carry(cluster, tmp_path_factory, backend, method, batch):
    """Columns cut inside a residual block: the compiled context takes x and its carry (a tuple) and
    returns y and its carry, the activation edge (cuda transport) carries them all; outputs equal the
    single-device reference, batched or not."""
    from bidl_models.config import load_config
    from bidl_runtime.api import stream
    from bidl_models.datasets.synthetic import synthetic_samples
    from conftest import TINY, active_net, write_config
    root = tmp_path_factory.mktemp("cut-arts")
    backbone, inshape = TINY["ResNetLifItout"]
    c = load_config(write_config(root / "resnet_cut.py", dict(backbone, timestep=4, noise=0.0), inshape))
    _, ckpt = active_net(c, root / "resnet_cut.pth")
    n = 5
    items = [(x, i % 10) for i, x in enumerate(synthetic_samples(4, (2, 32, 32), n, 0, rate=0.4))]
    rcfg = RuntimeConfig(backend=backend, transport="cuda", chunk_compile=method, batch=batch, metrics=False,
                         gpus_per_cell=0.25, start_timeout_s=600)
    report = stream(c, items, grid=(2, 2), rcfg=rcfg, checkpoint=ckpt, artifacts=root / "arts", verify=True)
    split = report.plan.splits[0][1]
    assert isinstance(split, str), f"expected a cut inside a block, got {report.plan.splits}"
    edge = report.plan.edge("cell[1,1]@dev3:x")
    assert len(edge.layout) > 1 and edge.transport == "cuda", edge
    assert list(report.outputs) == list(range(n))
    if backend == "compiled":
        assert report.verify == {"equal": n, "compared": n, "max_abs_diff": 0.0}, report.verify
    else:
        assert report.verify["compared"] == n and report.verify["max_abs_diff"] < 1e-3, report.verify


@needs_gpu
def test_cuda_grid_equals_single_cell(cluster, tmp_path_factory):
    """A 3x2 grid on one GPU (six cells sharing it, cuda edges, the default Inductor + CUDA graphs:
    one cell per program compiles, the others load its cache file; the chunk runs in the actor's loop
    thread) against the single-device reference: every sample compared, in order."""
    from bidl_runtime.api import stream
    n, t = 5, 6
    rcfg = RuntimeConfig(backend="cuda", gpus_per_cell=0.1, metrics=False, start_timeout_s=600)
    report = stream(tiny_glyphs(t), glyph_samples(t, n), grid=(3, 2), rcfg=rcfg,
                    artifacts=tmp_path_factory.mktemp("gpu-arts"), verify=True)
    print("3x2 on one GPU vs reference:", report.verify)
    assert report.verify["compared"] == n and report.verify["max_abs_diff"] < 1e-3, report.verify
    assert list(report.outputs) == list(range(n))
    assert {e.transport for e in report.plan.edges if e.kind in ("state", "activation")} == {"cuda"}
    assert all(c["format"] == "graphs (cuda)" for c in report.cells)


# ------------------------------------------------------------------------------- benchmarks

def test_spikingjelly_lif_is_bidl_lif():
    """gpu_cell's SpikingJelly baseline computes the same network: BIDL's LIF (beta = v0 = 0) is
    SpikingJelly's with decay_input=False, tau = 1/(1-alpha), v_threshold = theta."""
    pytest.importorskip("spikingjelly", reason="SpikingJelly not installed (pip install spikingjelly --no-deps)")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_cell import to_spikingjelly

    from bidl_models import build_backbone
    from conftest import activate
    net = activate(build_backbone(dict(type="ResNetLifItout", depth=10, nclass=10, timestep=3, input_channels=2,
                                       stem_channels=16, base_channels=16, soma_params="all_share"))).eval()
    seg = net.segment(0, net.n_blocks)
    x = (torch.rand((3, 2, 2, 32, 32), generator=torch.Generator().manual_seed(0)) < 0.3).float()
    with torch.inference_mode():
        y, st = seg.run(x, None)
        y2, st2 = to_spikingjelly(seg).run(x, None)
        y3, st3 = to_spikingjelly(seg).run(x, st)            # from a carried state too
        y4, st4 = seg.run(x, st)
    assert float((y - y2).abs().max()) < 1e-5 and list(st2) == list(st)
    assert max(float((st[k] - st2[k]).abs().max()) for k in st) < 1e-5
    assert max(float((st4[k] - st3[k]).abs().max()) for k in st) < 1e-5 and float((y3 - y4).abs().max()) < 1e-5
    normed = build_backbone(dict(type="ResNetLifItout", depth=10, nclass=10, timestep=3, input_channels=2,
                                 stem_channels=16, base_channels=16, norm_state=True))
    with pytest.raises(ValueError, match="cannot map"):
        to_spikingjelly(normed.segment(0, normed.n_blocks))


@pytest.mark.slow
def test_gpu_cell_benchmark_smoke(tmp_path):
    """benchmarks/gpu_cell.py --smoke: every method and the state hop through the same code as on a GPU."""
    import json
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "benchmarks/gpu_cell.py", "--smoke", "--configs", "2x1",
                        "--chunk-compile", "eager", "--iters", "1", "--hop", "--hop-iters", "4", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_cell.json").read_text())
    assert doc["device"].startswith("cpu") and doc["smoke"]
    (res,) = doc["results"]
    assert (res["T"], res["batch"]) == (2, 1)
    for m in ("step", "chunk", "ours:eager"):
        assert res["methods"][m]["frames_per_s"] > 0 and res["methods"][m]["max_abs_diff"] < 1e-5, (m, res)
    assert res["methods"]["ours:eager"]["method"] == "eager" and res["ours_best"] == "ours:eager"
    assert res["ours_over_step"] == pytest.approx(res["methods"]["ours:eager"]["frames_per_s"]
                                                  / res["methods"]["step"]["frames_per_s"])
    sj = res["methods"]["sj"]
    assert "skipped" in sj or sj["max_abs_diff"] < 1e-5
    hop = doc["state_hop"]
    assert hop["content_equal"] and hop["memory"] == "host" and hop["hop_ms_median"] > 0
    assert (tmp_path / "gpu_cell.png").is_file()


@pytest.mark.slow
def test_gpu_check_script_runs_its_stages_and_reports(tmp_path):
    """benchmarks/gpu/check.sh with SMOKE=1 (CPU): a stage runs, one that does not fit the budget is
    skipped with the command to rerun it, everything lands in $OUT."""
    env = dict(os.environ, SMOKE="1", STAGES="tests cell", BUDGET_S="70", OUT=str(tmp_path / "out"),
               CHECK_WORK=str(tmp_path / "work"))
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", "benchmarks/gpu/check.sh"], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    log = (tmp_path / "out" / "check.log").read_text()
    assert "START tests (limit" in log and "END tests rc=" in log          # run, within what was left
    assert "SKIP cell" in log and 'rerun with STAGES="cell"' in log, log[-2000:]   # needs 100 s: never fits in 70
    assert "passed" in log
