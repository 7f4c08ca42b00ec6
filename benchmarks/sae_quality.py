"""SAE-V quality on a trained model: standard (paper preset) and TopK SAEs on the testbed, per modality.

The model (the testbed LLaVA of `saev_curate.testbed`, trained here on real digits, faces, photos and
drawn shapes) is built into the cache when missing. Activations of its middle layer on clean
question/answer rows over its training images are cached once; both SAEs train from that cache and are evaluated on
held-out rows: L0, explained variance, MSE, dead features per modality, and spliced CE recovered.
Target (issue 5): topk CE recovered >= 0.90 on image+text sequences at L0 <= 64.

    python -m benchmarks.sae_quality [--train-rows 4000] [--steps 3000] [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saev_curate.sae.evaluate import evaluate_sae
from saev_curate.sae.training import ActivationCache, ActivationStream, StreamConfig, TrainConfig, train_on_activations
from saev_curate.testbed import build_testbed
from saev_curate.testbed.data import defect_rows
from saev_curate.vlm.layers import decoder_layers
from saev_curate.vlm.load import load_vlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--standard-lr", type=float, default=4e-4)
    parser.add_argument("--topk-lr", type=float, default=1e-3)
    parser.add_argument("--l1", type=float, default=5.0, help="standard SAE L1 coefficient (paper: 5)")
    parser.add_argument("--layer", type=int, help="default: the middle decoder layer")
    parser.add_argument("--only", choices=["standard", "topk"])
    parser.add_argument("--retrain", action="store_true", help="ignore SAEs already trained in the cache")
    args = parser.parse_args()

    torch.manual_seed(0)
    model_dir = build_testbed()
    work = model_dir.parent / f"{model_dir.name}-sae-quality"
    model, processor = load_vlm(model_dir)
    layer = args.layer if args.layer is not None else len(decoder_layers(model)) // 2
    train_rows = defect_rows(args.train_rows, defect_rate=0.0, split="train", seed=100)  # clean rows, train images
    eval_rows = defect_rows(args.eval_rows, defect_rate=0.0, split="test", seed=3)  # held-out images
    print(f"model {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params), layer {layer}; "
          f"{len(train_rows)} train rows, {len(eval_rows)} held-out rows")

    cache_dir = work / f"acts-layer{layer}-{args.train_rows}"
    try:
        cache = ActivationCache(cache_dir)
    except Exception:
        t0 = time.perf_counter()
        stream = ActivationStream(model, processor, train_rows, StreamConfig(layer=layer, mode="full"))
        cache = ActivationCache.write(stream, cache_dir, metadata={"model": str(model_dir)})
        print(f"cached {cache.n_tokens} tokens ({cache.meta['n_image']} image) in {time.perf_counter() - t0:.0f}s")

    results = {}
    for arch in ("standard", "topk"):
        if args.only and arch != args.only:
            continue
        out = work / f"sae-{arch}-layer{layer}"
        cfg = TrainConfig(output_dir=str(out), architecture=arch, expansion_factor=args.expansion, k=args.k,
                          total_steps=args.steps, batch_size=args.batch, checkpoint_every=500,
                          lr=args.topk_lr if arch == "topk" else args.standard_lr, l1_coefficient=args.l1,
                          dead_after_tokens=args.batch * 200, model_name=str(model_dir),
                          hook_name=f"blocks.{layer}.hook_resid_post", hook_layer=layer, dataset_path="testbed clean rows (train images)")
        t0 = time.perf_counter()
        if args.retrain or not (out / "cfg.json").exists():
            sae = train_on_activations(cfg, cache)
        else:
            from saev_curate import load_sae

            sae = load_sae(out)
        train_s = time.perf_counter() - t0
        result = evaluate_sae(model, processor, sae, eval_rows, layer, mode="full")
        print(f"\n== {arch} SAE (d_sae {sae.cfg.d_sae}{', k ' + str(args.k) if arch == 'topk' else ''}; "
              f"{args.steps} steps x {args.batch} tokens; trained in {train_s:.0f}s) ==")
        print(result.table())
        results[arch] = {"train_seconds": train_s, **result.to_dict()}
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if "topk" in results:
        r = results["topk"]
        ok = r["ce_recovered"] >= 0.90 and r["all"]["l0"] <= 64
        print(f"\ntopk target (CE recovered >= 0.90 at L0 <= 64): CE recovered {r['ce_recovered']:.3f}, "
              f"L0 {r['all']['l0']:.1f} -> {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
