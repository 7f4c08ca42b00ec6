"""GPU check: capture, scoring, SAE encode/decode and SAE training at LLaVA-NeXT-7B's shapes, bf16 and fp32.

    python benchmarks/gpu_check.py --out gpu_check.json                  # one CUDA card, ~6 min on an H100
    python benchmarks/gpu_check.py --out smoke.json --device cpu --tiny  # the same code paths at toy shapes

Without CUDA (and without `--device cpu`) it prints one "gpu_check: SKIP ..." line, writes a JSON that
says so, and exits 0. Every measurement is bounded (a few repeats, and a time budget: `--budget-s`,
default 420 s, shared out section by section; what does not fit is recorded as skipped), every
failure (out of memory included) is recorded in the JSON and the next measurement runs, and the JSON
is rewritten after every measurement, so a run killed from outside still leaves what it measured.

Sections (JSON keys), in the order they run:
  env     torch / CUDA / card / library versions.
  sae     encode+decode vectors/s, saev-curate vs sae-lens on the same weights: d_in 4096, d_sae 16,384 and
          65,536, standard and topk (k 64), fp32 and bf16 weights.
  train   training vectors/s, benchmarks/train_throughput.py's interleaved runs on this device: topk vs
          sparsify, standard and topk vs sae-lens; d_in 4096, d_sae 16,384 and 65,536, batch 4096; fp32 and
          bf16 autocast (sparsify's forward always runs under bf16 autocast on a bf16-capable card).
  vlm     a LLaVA-1.5/NeXT-7B-shaped model built from config with random weights: the Vicuna-7B text model
          (hidden 4096, MLP 11008, 32 heads) kept up to the captured layer (16, the middle of 32: capture stops
          there, so layers 17-31 would only add weight memory, estimated in `weights_gib_32_layers`), and the
          CLIP ViT-L/14 vision tower (24 layers, 1024 wide). 576 image tokens per row (a 336-px image, one
          LLaVA-NeXT tile) and 2,304 (a 672-px image through the same tower: as many image tokens as
          anyres's four tiles). Per dtype and shape: the bare forward (the floor), `capture_activations`,
          and per SAE (standard and topk, d_sae 65,536 and 16,384, random weights with biases set for an
          L0 of about 64) `CrossModalWeights.fit` and `SaevScorer` rows/s, each with its peak GPU memory
          (`torch.cuda.max_memory_allocated`). The fit counts (text, image) feature pairs as the default
          scorer does (bounded: `curation.counting`); `--no-pairs` leaves them out (the paper's ω alone).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

SECTIONS = ("sae", "train", "vlm")
# share of the time left that each section may use (the last one gets what remains)
SHARES = {"sae": 0.12, "train": 0.40, "vlm": 1.0}


# ------------------------------------------------------------------------------------------ report
class Report:
    """The JSON result, rewritten (atomically) after every change; knows the time budget."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s
        self.data: dict[str, Any] = {"status": "running", "budget_s": budget_s,
                                     "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.write()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def put(self, keys: tuple[str, ...], value: Any) -> None:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.write()
        print(f"[{self.data['elapsed_s']:6.1f}s] {'/'.join(keys)}: {_short(value)}", flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) < 300 else text[:297] + "..."


def guarded(report: Report, keys: tuple[str, ...], deadline: float, fn: Callable[[], Any]) -> Any:
    """Run one measurement unless the section's time is up; record its result, or its error, and free memory."""
    if time.perf_counter() >= deadline:
        report.put(keys, {"skipped": "time budget used up (raise --budget-s)"})
        return None
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one failure must not cost the rest of the run
        oom = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
        result = {"error": f"{'OUT OF MEMORY: ' if oom else ''}{type(exc).__name__}: {str(exc)[:400]}",
                  "traceback": traceback.format_exc(limit=6)[-2000:]}
    report.put(keys, result)
    free_memory()
    return result


# ------------------------------------------------------------------------------------------ device helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak memory since `reset_peak`: allocated GPU memory on CUDA; on CPU the process's peak RSS."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any], device: torch.device, *, repeats: int, deadline: float, warmup: int = 1
          ) -> list[float]:
    """Seconds per call after `warmup` calls; stops early (after at least one timed call) at the deadline."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() >= deadline:
            break
    return times


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ------------------------------------------------------------------------------------------ env
def env_info(device: torch.device) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_runtime": torch.version.cuda, "device": str(device),
                           "torch_threads": torch.get_num_threads(),
                           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    for pkg in ("transformers", "sae-lens", "eai-sparsify", "triton", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(card=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), bf16_supported=torch.cuda.is_bf16_supported())
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


# ------------------------------------------------------------------------------------------ SAE encode/decode
def sae_pair(arch: str, d_in: int, d_sae: int, k: int, device: torch.device):
    """Our SAE with random weights and biases, and sae-lens's SAE of the same class holding the same tensors."""
    import sae_lens

    from saev_curate.sae.model import SAE, SAEConfig

    ours = SAE.init_paper(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None),
                          seed=0, device=device)
    with torch.no_grad():
        ours.b_enc.normal_(0, 0.01)
        ours.b_dec.normal_(0, 0.1)
    same = {"d_in": d_in, "d_sae": d_sae, "device": str(device), "apply_b_dec_to_input": False}
    if arch == "topk":
        theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(k=k, **same))
    else:
        theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**same))
    theirs.load_state_dict({name: getattr(ours, name).detach().clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")})
    return ours.eval(), theirs.eval()


def sae_throughput(arch: str, d_sae: int, dtype: torch.dtype, args, device: torch.device, deadline: float) -> dict:
    ours, theirs = sae_pair(arch, args.d_in, d_sae, args.k, device)
    ours, theirs = ours.to(dtype), theirs.to(dtype=dtype)
    x = torch.randn(args.sae_vectors, args.d_in, device=device, dtype=dtype)
    batch = args.batch

    def run(sae):
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                sae(x[i : i + batch])

    with torch.inference_mode():
        diff = float((ours(x[:256]).float() - theirs(x[:256]).float()).abs().max())
    reset_peak(device)
    times: dict[str, list[float]] = {"ours": [], "sae-lens": []}
    run(ours), run(theirs)  # warm-up
    for r in range(args.repeats):
        for name in (("ours", "sae-lens") if r % 2 == 0 else ("sae-lens", "ours")):
            times[name] += timed(lambda: run(ours if name == "ours" else theirs), device, repeats=1,
                                 deadline=float("inf"), warmup=0)
        if time.perf_counter() >= deadline:
            break
    ratios = [b / a for a, b in zip(times["ours"], times["sae-lens"])]
    return {"vectors": len(x), "batch": batch, "max_abs_diff_vs_sae_lens": diff,
            "ours_vec_per_s": spread([len(x) / t for t in times["ours"]]),
            "sae_lens_vec_per_s": spread([len(x) / t for t in times["sae-lens"]]),
            "ours_over_sae_lens": spread(ratios), "peak_gib": peak_gib(device)}


def section_sae(report: Report, args, device: torch.device, deadline: float) -> None:
    for dtype_name, dtype in dtypes(args):
        for d_sae in args.d_sae:
            for arch in ("topk", "standard"):
                guarded(report, ("sae", dtype_name, f"{arch}_{d_sae}"), deadline,
                        lambda: sae_throughput(arch, d_sae, dtype, args, device, deadline))


# ------------------------------------------------------------------------------------------ training
def section_train(report: Report, args, device: torch.device, deadline: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.train_throughput import Setting, contenders, interleave, summarise

    g = torch.Generator(device=device).manual_seed(0)
    acts = torch.randn(args.batch * 4, args.d_in, device=device, generator=g)  # the values do not matter here
    for dtype_name, _ in dtypes(args):
        for d_sae in args.d_sae:
            s = Setting(d_sae=d_sae, k=args.k, batch=args.batch, steps=args.train_steps, warmup=3,
                        device=str(device), autocast_bf16=dtype_name == "bf16")
            for label, runners in contenders(["sparsify", "sae-lens"], acts, s).items():
                def one(runners=runners):
                    reset_peak(device)
                    out = summarise(interleave(runners, args.train_repeats))
                    return {**out, "steps": s.steps, "warmup_steps": s.warmup, "batch": s.batch, "k": s.k,
                            "peak_gib": peak_gib(device)}

                guarded(report, ("train", dtype_name, f"d_sae_{d_sae}", label), deadline, one)


# ------------------------------------------------------------------------------------------ VLM: capture and scoring
QUESTIONS = [
    "What is the person in this photograph holding, and what colour is it? Answer in one short sentence.",
    "Describe the objects on the table in front of the window and say which one is the largest.",
    "How many animals can you count in this picture, and where in the picture is each of them standing?",
    "Is there any written text visible anywhere in the image? If there is, what does it say exactly?",
]


def build_vlm(image_px: int, layer: int, dtype: torch.dtype, device: torch.device, tiny: bool):
    """A LLaVA model of LLaVA-1.5/NeXT-7B's shapes (text layers 0..layer only), random weights, on `device`.

    The processor (and the tokenizer trained on the fly) come from `saev_curate.testing.build_tiny_vlm` at the
    right image and patch size; the model is then built from its config with real widths, directly on the device.
    """
    from transformers import AutoModelForImageTextToText

    from saev_curate.testing import build_tiny_vlm

    patch = 8 if tiny else 14
    small, processor = build_tiny_vlm("llava", seed=0, image_size=image_px, patch_size=patch)
    cfg = small.config
    del small
    text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4,
            "head_dim": 16} if tiny else \
           {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
            "head_dim": 128, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 32} if tiny else \
             {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "projection_dim": 768}
    cfg.text_config = type(cfg.text_config)(**{**cfg.text_config.to_dict(), **text, "num_hidden_layers": layer + 1})
    cfg.vision_config = type(cfg.vision_config)(**{**cfg.vision_config.to_dict(), **vision,
                                                   "image_size": image_px, "patch_size": patch})
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
    return model.eval(), processor


def make_rows(n: int, image_px: int, seed: int = 0) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    return [{"prompt": QUESTIONS[i % len(QUESTIONS)],
             "image": Image.fromarray((rng.rand(image_px, image_px, 3) * 255).astype("uint8"))} for i in range(n)]


def calibrated_sae(arch: str, d_sae: int, k: int, resid: torch.Tensor, layer: int, dtype: torch.dtype,
                   target_l0: int = 64):
    """A random SAE on the residuals' scale: input scale from the data, and (standard) per-feature biases
    set so that each feature fires on about target_l0 / d_sae of the calibration tokens (L0 about target_l0)."""
    from saev_curate.sae.model import SAE, SAEConfig, estimate_input_scale

    x = resid.float()
    sae = SAE.init_paper(SAEConfig(d_in=x.shape[-1], d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None,
                                   hook_layer=layer, input_scale=estimate_input_scale(x)), seed=0, device=x.device)
    if arch == "standard":
        with torch.no_grad():
            pre = sae.pre_activations(x)
            m = max(1, round(len(x) * target_l0 / d_sae))
            sae.b_enc.copy_(-pre.topk(m, dim=0).values[-1])
            del pre
    return sae.to(dtype)


def vlm_shape(report: Report, args, device: torch.device, dtype_name: str, dtype: torch.dtype, image_px: int,
              deadline: float) -> None:
    from saev_curate.core.devices import to_model_inputs
    from saev_curate.curation.crossmodal import CrossModalWeights
    from saev_curate.curation.scorers import SaevScorer
    from saev_curate.vlm import capture_activations, decoder_layers, prepare_batch

    tokens_label = f"{(image_px // (8 if args.tiny else 14)) ** 2}_image_tokens"
    keys = ("vlm", dtype_name, tokens_label)
    if time.perf_counter() >= deadline:
        report.put(keys, {"skipped": "time budget used up (raise --budget-s)"})
        return
    reset_peak(device)
    t = time.perf_counter()
    model, processor = build_vlm(image_px, args.layer, dtype, device, args.tiny)
    per_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    n_params = sum(p.numel() for p in model.parameters())
    itemsize = torch.finfo(dtype).bits // 8
    report.put(keys + ("model",), {
        "build_s": round(time.perf_counter() - t, 1), "params_b": round(n_params / 1e9, 3),
        "text_layers": args.layer + 1, "weights_gib": round(n_params * itemsize / 2**30, 2),
        "weights_gib_32_layers": round((n_params + per_layer * max(0, 32 - args.layer - 1)) * itemsize / 2**30, 2),
        "peak_gib": peak_gib(device)})
    rows = make_rows(args.rows, image_px)
    bs = args.vlm_batch
    batches = [prepare_batch(processor, rows[i : i + bs], mode="prompt") for i in range(0, len(rows), bs)]
    n_tokens = sum(int(b.inputs["attention_mask"].sum()) for b in batches)
    n_image = sum(int((b.inputs["input_ids"] == model.config.image_token_id).sum()) for b in batches)
    report.put(keys + ("rows",), {"rows": len(rows), "batch": bs, "tokens_per_row": n_tokens / len(rows),
                                  "image_tokens_per_row": n_image / len(rows)})
    inner = model.model  # holds only layers 0..layer: its bare forward is the truncated forward, the floor

    def floor():
        with torch.no_grad():
            for b in batches:
                inner(**to_model_inputs(b.inputs, model), use_cache=False)

    def capture():
        for b in batches:
            capture_activations(model, b, args.layer)

    def measure(fn):
        def run():
            reset_peak(device)
            times = timed(fn, device, repeats=args.vlm_repeats, deadline=deadline)
            return {"rows_per_s": spread([len(rows) / x for x in times]),
                    "tokens_per_s": statistics.median(n_tokens / x for x in times), "peak_gib": peak_gib(device)}
        return run

    floor_result = guarded(report, keys + ("floor_bare_forward",), deadline, measure(floor))
    guarded(report, keys + ("capture",), deadline, measure(capture))
    resid = torch.cat([a.resid[a.attention_mask.bool()] for a in (capture_activations(model, batches[0], args.layer),)])
    resid = resid[: 4096].float()

    for arch, d_sae in [(a, d) for d in sorted(args.d_sae, reverse=True) for a in ("standard", "topk")]:
        sub = keys + (f"{arch}_{d_sae}",)
        if time.perf_counter() >= deadline:
            report.put(sub, {"skipped": "time budget used up (raise --budget-s)"})
            continue

        def score_one(arch=arch, d_sae=d_sae):
            sae = calibrated_sae(arch, d_sae, args.k, resid, args.layer, dtype)
            out: dict[str, Any] = {}
            reset_peak(device)
            t = time.perf_counter()
            weights = CrossModalWeights.fit(model, processor, sae, rows[: args.fit_rows], args.layer,
                                            n_reference=None, batch_size=bs, pairs=args.pairs)
            sync(device)
            out["fit"] = {"rows": args.fit_rows, "rows_per_s": args.fit_rows / (time.perf_counter() - t),
                          "pairs": args.pairs, "peak_gib": peak_gib(device), "classes": weights.class_counts()}
            scorer = SaevScorer(model, processor, sae, weights, args.layer, responses=False)
            reset_peak(device)
            scored: list = []

            def score():
                scored.clear()
                for i in range(0, len(rows), bs):
                    scored.append(scorer(rows[i : i + bs]))

            times = timed(score, device, repeats=args.vlm_repeats, deadline=deadline)
            last = {name: list(col)[:2] for name, col in scored[0].items()
                    if name in ("saev_score", "saev_l0_image", "saev_l0_text", "saev_error")}
            out["score"] = {"rows_per_s": spread([len(rows) / x for x in times]), "peak_gib": peak_gib(device),
                            "first_rows": last}
            if isinstance(floor_result, dict) and "rows_per_s" in floor_result:
                out["score"]["vs_floor"] = out["score"]["rows_per_s"]["median"] / floor_result["rows_per_s"]["median"]
            return out

        guarded(report, sub, deadline, score_one)
    # the model goes when this frame does; `guarded` (the caller) then frees the cached GPU memory


def section_vlm(report: Report, args, device: torch.device, deadline: float) -> None:
    sizes = [32, 64] if args.tiny else [336, 672]
    for dtype_name, dtype in dtypes(args):
        for image_px in sizes:
            guarded(report, ("vlm", dtype_name, f"_{image_px}px_done"), deadline,
                    lambda: vlm_shape(report, args, device, dtype_name, dtype, image_px, deadline) or True)


# ------------------------------------------------------------------------------------------ main
def dtypes(args) -> list[tuple[str, torch.dtype]]:
    table = {"bf16": torch.bfloat16, "fp32": torch.float32}
    return [(name, table[name]) for name in args.dtypes]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", required=True, help="JSON file to write (rewritten after every measurement)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only with --tiny: a smoke run)")
    ap.add_argument("--tiny", action="store_true", help="toy shapes (a smoke run of every code path, e.g. on CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time budget for all sections (default 420)")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--pairs", action=argparse.BooleanOptionalAction, default=True,
                    help="count (text, image) feature pairs in the fit, as the default scorer does (default on)")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.d_in = 64 if tiny else 4096
    args.d_sae = [256, 512] if tiny else [16384, 65536]
    args.k = 8 if tiny else 64
    args.batch = 256 if tiny else 4096
    args.sae_vectors = 1024 if tiny else 32768
    args.repeats = 3 if tiny else 5
    args.train_steps = 5 if tiny else 15
    args.train_repeats = 2 if tiny else 3
    args.layer = 1 if tiny else 16
    args.rows = 4 if tiny else 8
    args.fit_rows = 4 if tiny else 8
    args.vlm_batch = 2 if tiny else 4
    args.vlm_repeats = 2 if tiny else 3
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = "gpu_check: SKIP no CUDA device (torch.cuda.is_available() is False); nothing measured"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"status": "skipped", "reason": msg, "torch": torch.__version__}, indent=1))
        print(msg)
        return 0
    if device.type != "cuda" and not args.tiny:
        print("gpu_check: --device cpu runs only with --tiny (a smoke run); real shapes need a GPU", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device)
    report = Report(out, args.budget_s)
    report.put(("env",), env_info(device))
    report.put(("settings",), {k: v for k, v in vars(args).items() if k != "out"})
    for name in SECTIONS:
        if name not in args.sections:
            continue
        start = time.perf_counter()
        deadline = start + max(0.0, report.left()) * SHARES[name]
        globals()[f"section_{name}"](report, args, device, deadline)
        report.put(("section_seconds", name), round(time.perf_counter() - start, 1))
    report.data["status"] = "done"
    report.put(("elapsed_s",), round(time.perf_counter() - report.t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
