"""One GPU cell against BIDL-style eager and SpikingJelly, in one run; and the state hop between two
cells on one GPU.

    python benchmarks/gpu_cell.py [--configs 10x1,48x1,10x16] [--methods step,chunk,sj,ours]
        [--chunk-compile graphs] [--iters N] [--hop] [--out benchmarks/results/gpu] [--smoke]

Per configuration ``TxB`` (time steps x batch), on ResNetLif50 2x128x128 (seeded weights):

- ``step``: BIDL's GPU style: the model called once per time step, eager;
- ``chunk``: our explicit-state chunk function over the whole chunk, eager (the reference of |diff|);
- ``sj``: the same network and weights with every LIF cell replaced by SpikingJelly 2.0's fused
  multi-step LIF (``functional.lif_multi_step``; its fastest backend on the device). BIDL's LIF
  ``u = x + v; f = [u >= theta]; v' = alpha (f v0 + (1-f) u) + beta`` is SpikingJelly's LIF with
  ``decay_input=False``, ``tau = 1/(1-alpha)``, ``v_threshold = theta``, ``v_reset = v0`` when
  ``beta = 0`` and ``v0 = 0`` (its membrane is BIDL's ``v / alpha``), so |diff| is meaningful;
- ``ours:<method>``: the compiled artifact (:class:`bidl_runtime.cell.compiled.CompiledChunk`, each method
  of ``--chunk-compile``, default ``graphs`` = Inductor + CUDA graphs and ``capture`` = the exported
  program in one CUDA graph) with resident buffers, as a ``cuda`` cell runs it.

Each: time-step frames/s (``T * B`` frames per call, steady state after warm-up, the device
synchronised), compile/prepare seconds, max |diff| of the output and the state against ``chunk``, and
spike flips. ``--hop``: one-way hop of the ResNetLif50 membrane state (50 tensors, 12.55 MB) between
two processes through the ``cuda`` transport (RTT/2 of a ping-pong, signalling included).
``--smoke``: the same code paths on CPU at toy size (depth 18, 2x32x32; the cuda transport in host
memory), for tests and machines without a GPU. Writes ``gpu_cell.json`` and ``gpu_cell.png`` (device
name in both) into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

CONFIG = "resnetlif50-itout-b8x1-cifar10dvs"
METHODS = ("step", "chunk", "sj", "ours")


# ------------------------------------------------------------------------------ helpers

def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        return f"{p.name} (sm{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)"
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, iters: int, warmup: int = 2) -> float:
    """Median seconds of one call (the device synchronised around each)."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_model_config(T: int, smoke: bool):
    from bidl_models.config import load_config
    size = 32 if smoke else 128
    over = [f"model.backbone.timestep={T}", f"model.backbone.h={size}", f"model.backbone.w={size}",
            f"models_compile_inputshape=[[1,2,{size},{size}]]"] + (["model.backbone.depth=18"] if smoke else [])
    cfg = load_config(CONFIG, over)
    if "lynxi_devices" in cfg:
        del cfg["lynxi_devices"]
    return cfg


def diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, Any]:
    """max |a - b| over the output and the state tensors; spike flips of the output."""
    d = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
    return {"max_abs_diff": d}


# ------------------------------------------------------------------------------ SpikingJelly

class SjLif(nn.Module):
    """A BIDL ``Lif`` cell computed by SpikingJelly's fused multi-step LIF (see the module docstring)."""

    def __init__(self, cell: nn.Module, backend_fn: Callable):
        super().__init__()
        p = {n: getattr(cell, n) for n in ("alpha", "beta", "theta", "v_0")}
        bad = [n for n, v in p.items() if v.numel() != 1]
        if cell.norm is not None or cell.mode != "spike" or bad:
            raise ValueError(f"cannot map {type(cell).__name__}: state norm, analog mode or per-channel "
                             f"parameters {bad} have no SpikingJelly LIF equivalent")
        self.alpha, beta, self.theta, v0 = (float(p[n]) for n in ("alpha", "beta", "theta", "v_0"))
        if beta != 0.0 or v0 != 0.0 or not 0.0 < self.alpha < 1.0:
            raise ValueError(f"cannot map LIF with beta={beta}, v0={v0}, alpha={self.alpha}")
        self.tau = 1.0 / (1.0 - self.alpha)
        self.fn = backend_fn

    def run(self, x: torch.Tensor, state: Optional[dict] = None) -> tuple[torch.Tensor, dict]:
        v = torch.zeros_like(x[0]) if not state else state["v"] / self.alpha
        spikes, v = self.fn(x, v, self.tau, self.theta)
        return spikes, {"v": v * self.alpha}


def sj_lif_fn() -> Callable:
    """SpikingJelly 2.0's multi-step LIF as ``fn(x_seq, v, tau, theta) -> (spikes, v)``."""
    from spikingjelly.activation_based import functional, surrogate
    sg = surrogate.Sigmoid()

    def fn(x, v, tau, theta):
        out = functional.lif_multi_step(x, v, tau, False, theta, 0.0, sg, True, False)
        return out[0], out[1]
    return fn


def to_spikingjelly(seg: nn.Module) -> nn.Module:
    """A copy of ``seg`` whose ``Lif`` cells run SpikingJelly's fused LIF (ValueError if one cannot)."""
    from bidl_models.layers import Lif
    fn = sj_lif_fn()
    out = copy.deepcopy(seg)
    for name, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, Lif):
                setattr(mod, child_name, SjLif(child, fn))
    return out


# ------------------------------------------------------------------------------ one configuration

def measure(T: int, B: int, methods: list[str], args, dev: torch.device, work: Path,
            saved: Callable[[dict], None] = lambda res: None) -> dict[str, Any]:
    """Every method on one ``TxB`` configuration; ``saved(res)`` after each (partial results survive a kill)."""
    from bidl_runtime.cell.compiled import CompiledChunk
    from compile import CompileJob, CompileOptions
    # the exported program only (gpu_cell checks |diff| itself; no TorchScript form needed)
    job = CompileJob(load_model_config(T, args.smoke), grid=(1, 1),
                     options=CompileOptions(out=str(work / "artifacts"), batch=B, fast_load=False, verify=False,
                                            progress=False, verbose=False))
    spec = job.spec
    seg = spec.segments[0].eval().to(dev)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((T, B) + tuple(spec.in_shape), generator=g) < 0.2).float().to(dev)
    names: list[str] = []
    res: dict[str, Any] = {"T": T, "batch": B, "frames_per_call": T * B, "methods": {}}

    def flat(y, st) -> list[torch.Tensor]:
        return [y] + [st[n] for n in names]

    runs = [(f"ours:{cm}" if m == "ours" else m, cm if m == "ours" else None)
            for m in methods for cm in (args.chunk_compile.split(",") if m == "ours" else [None])]
    with torch.inference_mode():
        y_ref, st_ref = seg.run(x, None)
        names[:] = list(st_ref)
        ref = [t.clone() for t in flat(y_ref, st_ref)]
        for m, cm in runs:
            t0 = time.perf_counter()
            r: dict[str, Any] = {}
            try:
                if m == "chunk":
                    call = lambda: seg.run(x, None)                           # noqa: E731
                    got = ref
                elif m == "step":
                    def call():
                        st, ys = None, []
                        for t in range(T):
                            y, st = seg.run(x[t:t + 1], st)
                            ys.append(y)
                        return torch.cat(ys), st
                    y, st = call()
                    got = flat(y, st)
                elif m == "sj":
                    sj = to_spikingjelly(seg)
                    call = lambda: sj.run(x, None)                            # noqa: E731
                    y, st = call()
                    got = flat(y, st)
                else:   # ours
                    arts = job.artifacts()
                    r["prepare_s"] = time.perf_counter() - t0
                    path = str(arts.records[0].path)
                    from bidl_runtime.cell.compiled import example_inputs
                    from compile.artifact import load_artifact
                    ins = example_inputs(load_artifact(path), B, dev)   # resident buffers, as a cuda cell has
                    chunk = CompiledChunk.load(path, dev, B, cm, cache=True, amp=args.amp, static_inputs=ins)
                    ins[0].copy_(x)
                    r.update({k: chunk.info.get(k) for k in ("method", "cache", "compile_s", "warmup_s", "amp")})
                    call = lambda: chunk(*ins)                                # noqa: E731
                    got = [t.clone() for t in call()]
                r["setup_s"] = time.perf_counter() - t0
                r["seconds_per_call"] = timed(call, dev, args.iters)
                r["frames_per_s"] = T * B / r["seconds_per_call"]
                r.update(diff(got, ref))
                r["spike_flips"] = int((got[0] != ref[0]).sum()) if got[0].shape == ref[0].shape else None
            except Exception as e:   # noqa: BLE001 - a method that cannot run here is reported, not fatal
                r = {"skipped": f"{type(e).__name__}: {e}"[:400]}
            res["methods"][m] = r
            saved(res)
            print(f"  T={T} B={B} {m:>13}: " + (f"{r['frames_per_s']:10.0f} frames/s  |diff| {r['max_abs_diff']:.2e}"
                                                 if "frames_per_s" in r else r["skipped"]), flush=True)
    fps = {m: v.get("frames_per_s") for m, v in res["methods"].items()}
    ours = max(((v, m) for m, v in fps.items() if m.startswith("ours:") and v), default=None)
    if ours:
        res["ours_best"] = ours[1]
        for base in ("sj", "step", "chunk"):
            if fps.get(base):
                res[f"ours_over_{base}"] = ours[0] / fps[base]
    return res


# ------------------------------------------------------------------------------ state hop

def _hop_peer(desc_q, back_q, cfg_dict, specs, n: int) -> None:
    from bidl_runtime.channels import ChannelConfig, attach_sender, create_receiver
    cfg = ChannelConfig.from_dict(cfg_dict)
    rx = create_receiver("hop:back", specs, cfg)
    back_q.put(rx.descriptor)
    tx = attach_sender(desc_q.get())
    for _ in range(n):
        with rx.recv(timeout=60) as m:
            tx.send(m.tensors, {"i": 0}, timeout=60)
    time.sleep(0.5)
    tx.close()
    rx.close()


def state_hop(args, dev: torch.device) -> dict[str, Any]:
    """One-way hop (RTT/2) of the membrane state between two processes through the cuda transport."""
    from bidl_runtime.channels import ChannelConfig, attach_sender, create_receiver, new_secret
    from benchmarks.channel_hops import membrane_specs
    gpu = dev.type == "cuda"
    specs = membrane_specs() if not args.smoke else membrane_specs()[:8]
    nbytes = sum(s.nbytes for s in specs)
    cfg = ChannelConfig(transport="cuda", depth=2, cuda_memory="cuda" if gpu else "host", secret=new_secret())
    ctx = mp.get_context("spawn")
    desc_q, back_q = ctx.Queue(), ctx.Queue()
    n = args.hop_iters
    p = ctx.Process(target=_hop_peer, args=(desc_q, back_q, cfg.to_dict() | {"secret": cfg.secret}, specs, n + 5))
    p.start()
    rx = create_receiver("hop:out", specs, cfg)
    desc_q.put(rx.descriptor)
    tx = attach_sender(back_q.get(timeout=120))
    state = {s.name: (torch.rand(s.shape) if s.dtype == "float32" else s.zeros()).to(dev) for s in specs}
    rtts = []
    for i in range(n + 5):
        t = time.perf_counter()
        tx.send(state, {"i": i}, timeout=60)
        with rx.recv(timeout=60) as m:
            if gpu:
                torch.cuda.current_stream(dev).synchronize()
            if i == 0:
                ok = all(torch.equal(m.tensors[k], v) for k, v in state.items())
        rtts.append(time.perf_counter() - t)
    tx.close()
    p.join(60)
    rx.close()
    hop = sorted(r / 2 for r in rtts[5:])
    return {"transport": "cuda", "memory": cfg.cuda_memory, "tensors": len(specs), "bytes": nbytes,
            "hop_ms_median": 1e3 * hop[len(hop) // 2], "hop_ms_p90": 1e3 * hop[int(0.9 * len(hop))],
            "iters": n, "content_equal": bool(ok), "target_ms": 1.0}


# ------------------------------------------------------------------------------ report

def plot(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = doc["results"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(dict.fromkeys(m for r in rows for m in r["methods"]))
    w = 0.8 / max(1, len(names))
    for i, m in enumerate(names):
        vals = [r["methods"].get(m, {}).get("frames_per_s") or 0 for r in rows]
        ax.bar([k + i * w for k in range(len(rows))], vals, w, label=m)
    ax.set_xticks([k + w * (len(names) - 1) / 2 for k in range(len(rows))])
    ax.set_xticklabels([f"T={r['T']} B={r['batch']}" for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("time-step frames/s")
    ax.set_title(f"one cell, {doc['model']} on {doc['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_cell.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=None, help="TxB list (default 10x1,48x1,10x16; smoke 4x1,4x2)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--chunk-compile", default=None, help="ours: one or more of compiled.METHODS, comma-separated, "
                    "each measured (default graphs,capture; smoke inductor)")
    ap.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="ours: autocast precision")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per method (default 20; smoke 3)")
    ap.add_argument("--hop", action="store_true", help="also measure the state hop between two processes")
    ap.add_argument("--hop-iters", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="toy size on CPU: the same code paths, no GPU needed")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu"))
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"error: --methods {bad}: expected some of {list(METHODS)}", file=sys.stderr)
        return 2
    if args.smoke:
        dev = torch.device("cpu")
        args.configs = args.configs or "4x1,4x2"
        args.iters = args.iters or 3
        args.chunk_compile = args.chunk_compile or "inductor"
        args.hop_iters = min(args.hop_iters, 20)
    else:
        from bidl_runtime.cell.contexts import CudaUnavailable, require_cuda
        try:
            require_cuda("benchmarks/gpu_cell.py")
        except CudaUnavailable as e:
            print(f"error: {e} (or --smoke)", file=sys.stderr)
            return 2
        dev = torch.device("cuda", 0)
        args.configs = args.configs or "10x1,48x1,10x16"
        args.iters = args.iters or 20
        args.chunk_compile = args.chunk_compile or "graphs,capture"
    configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import spikingjelly
        sj_version = getattr(spikingjelly, "__version__", "installed")
    except ImportError:
        sj_version = None
    doc: dict[str, Any] = {
        "benchmark": "gpu_cell", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(dev), "smoke": args.smoke, "torch": torch.__version__, "spikingjelly": sj_version,
        "model": f"ResNetLif{18 if args.smoke else 50} 2x{32 if args.smoke else 128}x{32 if args.smoke else 128} "
                 "(seeded weights)", "methods": methods, "chunk_compile": args.chunk_compile, "amp": args.amp,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [],
    }
    print(f"gpu_cell on {doc['device']}: {doc['model']}, methods {methods}, ours = {args.chunk_compile}")
    def save(partial: bool = True) -> None:
        doc["partial"] = partial
        (out / "gpu_cell.json").write_text(json.dumps(doc, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu-cell-") as tmp:
        work = Path(os.environ.get("BIDL_GPU_CELL_WORK", tmp))
        for T, B in configs:
            doc["results"].append({"T": T, "batch": B, "methods": {}})
            doc["results"][-1] = measure(T, B, methods, args, dev, work,
                                         lambda res: (doc["results"].__setitem__(-1, res), save()))
            save()
    if args.hop:
        doc["state_hop"] = state_hop(args, dev)
        h = doc["state_hop"]
        print(f"  state hop ({h['tensors']} tensors, {h['bytes'] / 1e6:.2f} MB, {h['memory']} memory): "
              f"{h['hop_ms_median']:.3f} ms median, {h['hop_ms_p90']:.3f} ms p90")
    save(partial=False)
    png = plot(doc, out / "gpu_cell.png")
    print(f"wrote {out / 'gpu_cell.json'}" + (f", {out / 'gpu_cell.png'}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
