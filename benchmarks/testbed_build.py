"""Where the testbed build's time goes, and what each choice of the v4 build bought (CPU, side by side).

The instruction stage is most of the build.  One instruction step is timed (forward, backward, AdamW)
on the same examples in three variants, repeats interleaved, medians reported:

  (a) v3's batches: examples drawn at random (every batch pads to its longest example), with the
      v3 chat template's default system prompt (9 tokens in every sequence);
  (b) length-bucketed batches (8 batches' examples drawn together, sorted by length, cut), system prompt kept;
  (c) the v4 build: bucketed, no default system prompt.

Also: the vision tower's share of a step (it is frozen after stage 0: is caching its features worth it?),
how a step scales with the batch (is the step compute-bound?), and the stage times of the cached build.

    python -m benchmarks.testbed_build [--repeats 5] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

V3_SYSTEM = "answer questions about the image ."  # the v3 template's default system prompt


def _v3_template(template: str) -> str:
    """The v4 chat template with v3's default system prompt put back in front of the first user turn."""
    head = "{% for message in messages %}"
    return head + ("{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\\n" + V3_SYSTEM + "<|im_end|>\\n' }}{% endif %}") + template[len(head):]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="steps per timed repeat")
    args = ap.parse_args(argv)

    from saev_curate.testbed import build as B
    from saev_curate.testbed import images as timg

    cfg = B.TestbedConfig()
    model, processor = B.build_untrained(cfg)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    images = timg.sample_images("train", 600, seed=0)
    pv = processor.image_processor([im for im, _ in images], return_tensors="pt")["pixel_values"]
    index = {id(im): i for i, (im, _) in enumerate(images)}
    pixel_of = lambda im: pv[index[id(im)]]  # noqa: E731
    v4_template = processor.chat_template
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def batches(variant: str, seed: int, batch_size: int = cfg.batch_size) -> list:
        processor.chat_template = v4_template if variant == "c" else _v3_template(v4_template)
        enc = B._Encoder(processor)
        rng = np.random.RandomState(seed)

        def make():
            return B._stage2_example(enc, images[rng.randint(len(images))], rng, (), cfg.claim_weight,
                                     cfg.describe_share, cfg.sentence_share)

        if variant == "a":
            out = [[make() for _ in range(batch_size)] for _ in range(args.steps)]
        else:
            out = list(B._length_buckets(make, args.steps, batch_size, rng=rng))
        return [B._collate(b, enc.tok.pad_token_id, pixel_of) for b in out]

    def step_seconds(prepared: list) -> float:
        t = time.perf_counter()
        for batch in prepared:
            loss = B._lm_loss(model, batch, model.config.image_token_id)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t) / len(prepared)

    prepared = {v: batches(v, 0) for v in "abc"}
    tokens = {v: float(np.mean([int(b["input_ids"].numel()) for b in prepared[v]])) for v in "abc"}
    step_seconds(prepared["c"])  # warm-up
    times: dict[str, list[float]] = {v: [] for v in "abc"}
    for r in range(args.repeats):
        for v in "abc":
            times[v].append(step_seconds(batches(v, 100 + r)))
    med = {v: statistics.median(t) for v, t in times.items()}
    spread = {v: (min(t), max(t)) for v, t in times.items()}

    big = batches("c", 7, batch_size=2 * cfg.batch_size)
    scale = statistics.median([step_seconds(big) for _ in range(3)]) / statistics.median(
        [step_seconds(batches("c", 8)) for _ in range(3)])
    with torch.no_grad():
        pix = prepared["c"][0]["pixel_values"]
        t = time.perf_counter()
        for _ in range(10):
            model.model.vision_tower(pixel_values=pix)
        vit = (time.perf_counter() - t) / 10

    out = {"seconds_per_step": med, "spread": spread, "padded_tokens_per_batch": tokens,
           "speedup_bucketing": med["a"] / med["b"], "speedup_no_system_prompt": med["b"] / med["c"],
           "speedup_total": med["a"] / med["c"], "vision_tower_share_of_step": vit / med["c"],
           "step_time_ratio_batch_64_vs_32": scale, "threads": torch.get_num_threads()}
    print(f"instruction step, median of {args.repeats} interleaved repeats of {args.steps} steps "
          f"(batch {cfg.batch_size}, {torch.get_num_threads()} threads):")
    for v, name in (("a", "v3 batches (random, system prompt)"), ("b", "bucketed, system prompt"),
                    ("c", "v4: bucketed, no system prompt")):
        print(f"  ({v}) {name}: {med[v]:.3f} s/step (min {spread[v][0]:.3f}, max {spread[v][1]:.3f}), "
              f"{tokens[v]:.0f} padded tokens per batch")
    print(f"bucketing {out['speedup_bucketing']:.2f}x, no system prompt {out['speedup_no_system_prompt']:.2f}x, "
          f"together {out['speedup_total']:.2f}x")
    print(f"vision tower forward: {100 * out['vision_tower_share_of_step']:.1f}% of a step (caching its features "
          f"would save at most that); batch 64 vs 32: {scale:.2f}x the time (2.0 = compute-bound)")
    info = B.testbed_path() / "build_info.json"
    if info.is_file():
        meta = json.loads(info.read_text())
        out["cached_build"] = {"total": meta["seconds"]["total_this_run"],
                               **{s: meta[s]["seconds"] for s in ("stage0", "stage1", "stage2") if s in meta}}
        print(f"cached build ({info.parent.name}): {out['cached_build']} seconds")
    return out


if __name__ == "__main__":
    main()
