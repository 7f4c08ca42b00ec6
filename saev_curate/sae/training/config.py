"""The options of one SAE training run (``TrainConfig``: the recipe; ``SaevTrainConfig``: model + data in, what
``saev-curate train-sae`` parses). Plain dataclasses with a help text per field and no torch import, so that
``--help`` is instant."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from saev_curate.core.errors import InputError

if TYPE_CHECKING:
    from saev_curate.sae.training.activations import StreamConfig


@dataclass
class TrainConfig:
    """One SAE training run. Defaults are the SAE-V paper's recipe (method doc, section 2)."""

    output_dir: str = field(default="sae-out",
        metadata={'help': 'folder for the trained SAE (SAELens layout) and its resumable checkpoints', 'aliases': ['--out', '--output']})
    architecture: str = field(default="standard",
        metadata={'help': "'standard' (ReLU + decoder-norm-weighted L1: the paper) or 'topk'"})
    expansion_factor: int = field(default=16,
        metadata={'help': "d_sae = expansion_factor x d_in (default 16, the paper's)"})
    d_sae: int | None = field(default=None, metadata={'help': 'number of SAE features; overrides expansion_factor'})
    k: int = field(default=32, metadata={'help': 'active features per token (topk only)'})
    total_steps: int = field(default=30_000, metadata={'help': 'training steps'})
    batch_size: int = field(default=4096,
        metadata={'help': 'tokens per step, over all processes (torchrun: each process trains on batch_size / N)'})
    lr: float = field(default=5e-5, metadata={'help': 'Adam learning rate'})
    adam_beta1: float = field(default=0.9, metadata={'help': 'Adam beta1'})
    adam_beta2: float = field(default=0.999, metadata={'help': 'Adam beta2'})
    lr_warmup_steps: int = field(default=0, metadata={'help': 'linear learning-rate warm-up steps'})
    lr_decay_fraction: float = field(default=0.2,
        metadata={'help': 'linear decay to 0 over this last share of steps (default 0.2)'})
    l1_coefficient: float = field(default=5.0, metadata={'help': 'L1 coefficient lambda (standard only)'})
    l1_warmup_fraction: float = field(default=0.05,
        metadata={'help': 'linear warm-up of the L1 coefficient over this first share of steps'})
    grad_clip: float = field(default=1.0, metadata={'help': 'gradient-norm clip'})
    apply_b_dec_to_input: bool = field(default=False,
        metadata={'help': 'subtract b_dec from the input before encoding'})
    normalize_input: bool = field(default=True,
        metadata={'help': 'scale inputs to norm sqrt(d_in) (estimated on data); the scale is folded in at save'})
    scale_estimation_batches: int = field(default=8, metadata={'help': 'batches used to estimate the input scale'})
    aux_k_coefficient: float = field(default=1 / 32,
        metadata={'help': 'topk: weight of the AuxK loss on dead latents'})
    dead_after_tokens: int = field(default=10_000_000,
        metadata={'help': 'a latent that has not fired for this many tokens counts as dead'})
    normalize_decoder: bool | None = field(default=None,
        metadata={'help': 'unit-norm decoder rows (default: on for topk, off for standard)'})
    checkpoint_every: int | None = field(default=1000,
        metadata={'help': 'steps between resumable checkpoints (None: none)'})
    keep_checkpoints: int = field(default=2, metadata={'help': 'checkpoints kept on disk'})
    seed: int = field(default=0, metadata={'help': 'seed of initialisation and data order'})
    device: str = field(default="cpu", metadata={'help': 'device to train on: cpu, cuda, cuda:1'})
    model_name: str | None = field(default=None,
        metadata={'help': 'provenance written into the saved SAE: model name (default: --model)'})
    hook_name: str | None = field(default=None,
        metadata={'help': 'provenance: hook name (default: blocks.L.hook_resid_post)'})
    hook_layer: int | None = field(default=None,
        metadata={'help': 'provenance: decoder layer (default: the resolved --layer)'})
    dataset_path: str | None = field(default=None, metadata={'help': 'provenance: dataset (default: --data)'})
    context_size: int | None = field(default=None,
        metadata={'help': 'provenance: tokens per row (default: max_length)'})

    def __post_init__(self) -> None:
        if self.architecture not in ("standard", "topk"):
            raise InputError(f"train: architecture must be 'standard' or 'topk', got {self.architecture!r}")
        for name in ("total_steps", "batch_size", "expansion_factor"):
            if getattr(self, name) <= 0:
                raise InputError(f"train: {name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.lr_decay_fraction <= 1 or not 0 <= self.l1_warmup_fraction <= 1:
            raise InputError("train: lr_decay_fraction and l1_warmup_fraction must lie in [0, 1]")



@dataclass
class SaevTrainConfig(TrainConfig):
    """TrainConfig (the SAE recipe) plus where its activations come from."""

    model: str = field(default="", metadata={'help': 'local VLM folder (or a hub id already in the cache)'})
    dataset: str = field(default="",
        metadata={'help': 'training rows: a save_to_disk folder, .parquet/.json/.jsonl/.csv files '
                  '(a file, folder or glob), or a cached hub id', 'aliases': ['--data']})
    dataset_split: str | None = field(default=None, metadata={'help': 'split of a DatasetDict (default train)'})
    max_rows: int | None = field(default=None, metadata={'help': 'use only the first N rows'})
    layer: str = field(default="middle",
        metadata={'help': "decoder layer: index, 'middle' (n_layers // 2) or a hook name (blocks.16.hook_resid_post)"})
    mode: str = field(default="full",
        metadata={'help': 'text shown with the images: prompt | chosen | rejected | full'})
    max_length: int | None = field(default=None,
        metadata={'help': 'tokens per row; text is truncated, image tokens never are'})
    model_batch_size: int = field(default=8, metadata={'help': 'rows per forward pass of the VLM'})
    model_dtype: str | None = field(default=None,
        metadata={'help': 'VLM dtype: float32, bfloat16, float16 (default: float32 on CPU)'})
    exclude_special_tokens: bool = field(default=True,
        metadata={'help': 'leave BOS/EOS/chat markers out of the training tokens'})
    max_image_text_ratio: float | None = field(default=None,
        metadata={'help': 'subsample image tokens to at most this many per text token'})
    buffer_tokens: int = field(default=65_536,
        metadata={'help': 'shuffle-buffer size: tokens from many rows mix before a batch is cut'})
    activation_cache: str | None = field(default=None,
        metadata={'help': 'folder for one pass of activations: written on first use, reused (and resumed from) after'})
    cache_shard_rows: int = field(default=64,
        metadata={'help': 'rows per activation-cache shard (the unit the processes share and a rerun skips)'})
    max_image_pixels: int | None = field(default=None,
        metadata={'help': 'images with more pixels are that row\'s error (decompression bombs; default 89,478,485)'})
    min_usable_share: float | None = field(default=None,
        metadata={'help': 'fail when fewer than this share of rows can be used (default 0.5; 0: only when none)'})

    def stream_config(self, layer: int) -> StreamConfig:
        from saev_curate.sae.training.activations import StreamConfig

        names = {f.name for f in fields(StreamConfig)}
        values = {k: getattr(self, k) for k in names if hasattr(self, k) and k != "layer"}
        return StreamConfig(layer=layer, **values)

    def trainer_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})
