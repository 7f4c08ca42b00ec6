"""Baseline: CLIP cosine between a row's (first) image and its prompt (``saev_clip_score``), given a local
CLIP model folder."""

from __future__ import annotations

import torch

from saev_curate.core.devices import module_device
from saev_curate.curation.scorers.base import Scorer

__all__ = ["ClipScorer"]


class ClipScorer(Scorer):
    """CLIP cosine between each row's (first) image and its prompt text, from a local CLIP folder
    (``transformers`` ``CLIPModel`` + processor).  Column ``saev_clip_score``."""

    COLUMNS = {"clip_score": "float64", "clip_error": "string"}
    ROLES = ("clip",)
    DEFAULT_BATCH_SIZE = 32

    def __init__(self, clip_path: str, *, device: str | None = None, prefix: str = "saev_"):
        super().__init__(prefix=prefix, device=device)
        self.clip_path = str(clip_path)
        self.add_role("clip", self.clip_path)

    def load_role(self, role: str, path: str | None, device: str | None) -> None:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(path).eval()
        if self.device:
            model.to(self.device)
        self._objs["clip"], self._objs["clip_processor"] = model, CLIPProcessor.from_pretrained(path)

    def state(self) -> dict:
        return {"clip_path": self.clip_path}

    def restore_state(self, state: dict) -> None:
        self.clip_path = state["clip_path"]

    @staticmethod
    def _prompt_text(row: dict) -> str | None:
        from saev_curate.vlm.rows import row_to_conversation

        msgs, _, _ = row_to_conversation(row, "prompt")
        return " ".join(p.get("text", "") for m in msgs if m["role"] != "assistant" for p in m["content"]
                        if p["type"] == "text").strip()

    @torch.no_grad()
    def score_rows(self, rows: list[dict], keys: list[str]) -> dict[str, list]:
        from saev_curate.vlm.rows import load_image, row_to_conversation

        model, processor = self._objs["clip"], self._objs["clip_processor"]
        n = len(rows)
        scores: list[float | None] = [None] * n
        errors: list[str | None] = [None] * n
        texts, images, idx = [], [], []
        for i, row in enumerate(rows):
            try:
                _, refs, _ = row_to_conversation(row, "prompt")
                if not refs:
                    raise ValueError("the row has no image")
                images.append(load_image(refs[0]))
                texts.append(self._prompt_text(row) or "")
                idx.append(i)
            except Exception as e:  # noqa: BLE001 - the reason goes into the row's error column
                errors[i] = str(e)
        if idx:
            inp = processor(text=texts, images=images, return_tensors="pt", padding=True, truncation=True)
            dev = module_device(model)
            inp = {k: v.to(dev) for k, v in inp.items()}
            ti = model.get_text_features(input_ids=inp["input_ids"], attention_mask=inp.get("attention_mask"))
            ii = model.get_image_features(pixel_values=inp["pixel_values"])
            ti = getattr(ti, "pooler_output", ti)
            ii = getattr(ii, "pooler_output", ii)
            cos = torch.nn.functional.cosine_similarity(ti.float(), ii.float(), dim=-1)
            for j, i in enumerate(idx):
                scores[i] = float(cos[j])
        return {"clip_score": scores, "clip_error": errors}
