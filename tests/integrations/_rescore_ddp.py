"""Run under torchrun (2 processes, gloo, CPU) by test_integrations_trl: DPO + LoRA with re-scoring."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from _rescore_helpers import rows, sae_and_weights, trainer  # noqa: E402

from saev_curate import SaevRescoreCallback  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    ds = datasets.Dataset.from_list(rows(16, seed=5))
    sae, w = sae_and_weights()
    cb = SaevRescoreCallback(sae=sae, weights=w, every_n_steps=2, fraction=0.25, by="saev_score")
    tr = trainer("dpo", "llava", ds, os.path.join(out, "run"), max_steps=4, ddp_backend="gloo")
    cb.attach(tr)
    cb.sampler.record = []
    seen = []
    inner = tr.data_collator

    def collate(examples):
        seen.extend(int(e["prompt"][0]["content"][1]["text"].split()[0]) for e in examples)
        return inner(examples)

    tr.data_collator = collate
    tr.train()
    rank = torch.distributed.get_rank()
    doc = {"world_size": torch.distributed.get_world_size(),
           "segments": [{"start": s.start, "version": s.version, "rows": None if s.rows is None else s.rows.tolist()}
                        for s in cb.sampler.segments],
           "draws": [r for _, _, r in cb.sampler.record], "seen": seen,
           "rows_scored_here": cb.last_rows_scored_here, "scores": [None if v != v else v for v in cb.scores.tolist()]}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(doc, f)


if __name__ == "__main__":
    main(sys.argv[1])
