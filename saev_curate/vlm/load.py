"""Load a vision-language model and its processor from a local folder or a hub id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from saev_curate.core.devices import resolve_model_dtype
from saev_curate.core.errors import InputError

__all__ = ["load_processor", "load_vlm", "without_video_processor"]

def without_video_processor(base):
    """A subclass of processor class ``base`` (e.g. ``Qwen2VLProcessor``) that has no video processor.

    The stock Qwen2-VL / Qwen2.5-VL processors require a video processor, which needs torchvision;
    image-only use does not.  The subclass keeps ``base``'s name, so a folder saved with it still
    loads with the stock class where torchvision is installed.
    """
    if "video_processor" not in base.get_attributes():
        return base

    class _NoVideo(base):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    _NoVideo.__name__ = base.__name__
    _NoVideo.__qualname__ = base.__qualname__
    _NoVideo.__module__ = base.__module__
    return _NoVideo


def _processor_class_name(path) -> str | None:
    p = Path(path)
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = p / name
        if f.is_file():
            try:
                cls = json.loads(f.read_text()).get("processor_class")
            except (OSError, ValueError):
                cls = None
            if cls:
                return cls
    return None


def load_processor(path, trust_remote_code: bool = False, **hub_kwargs):
    """``AutoProcessor.from_pretrained``, retrying image-only for processors that insist on a video processor."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **hub_kwargs)
    except Exception as first:
        # Qwen2-VL-style processors insist on a video processor (torchvision); retry image-only.
        name = _processor_class_name(path) if os.path.isdir(path) else None
        if name is None:
            raise
        import transformers

        base = getattr(transformers, name, None)
        if base is None or "video_processor" not in base.get_attributes():
            raise
        try:
            return without_video_processor(base).from_pretrained(path, **hub_kwargs)
        except Exception:
            raise first from None


def load_vlm(path, *, dtype=None, device=None, quantization=None, trust_remote_code: bool = False,
             attn_implementation: str | None = None):
    """Load ``(model, processor)`` with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    ``path``: a local folder (``save_pretrained`` layout) or a hub id (downloads unless
    ``HF_HUB_OFFLINE=1``).  ``dtype``: a torch dtype or name (default: float32 on CPU, the
    checkpoint's dtype on GPU).  ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``
    (accelerate device map) or ``None`` (CUDA if available).  ``quantization``: ``None``, ``"4bit"``
    (NF4) or ``"8bit"`` through bitsandbytes.  The model is returned in eval mode.
    """
    from transformers import AutoModelForImageTextToText

    if quantization not in (None, "4bit", "8bit"):
        raise InputError(f"quantization={quantization!r}; use None, '4bit' or '8bit'")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = resolve_model_dtype(dtype, device)
    path_s = os.fspath(path)
    if os.path.exists(path_s) and not os.path.isdir(path_s):
        raise InputError(f"model path {path_s!r} is a file; pass the folder holding config.json")
    if os.path.isdir(path_s) and not os.path.isfile(os.path.join(path_s, "config.json")):
        raise InputError(f"model folder {path_s!r} has no config.json; pass a folder written by save_pretrained")

    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization is not None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise InputError(
                f"quantization={quantization!r} needs bitsandbytes; install it with "
                "`pip install -c constraints.txt 'saev-curate[quantization]'` or pass quantization=None"
            ) from None
        from transformers import BitsAndBytesConfig

        compute = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = "auto" if device == "auto" else {"": str(device)}
    elif device == "auto":
        kwargs["device_map"] = "auto"

    try:
        model = AutoModelForImageTextToText.from_pretrained(path_s, **kwargs)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        if not os.path.exists(path_s) and (os.path.isabs(path_s) or path_s.startswith((".", "~")) or path_s.count("/") > 1):
            raise InputError(f"no such model folder: {path_s!r}; give a local VLM folder (save_pretrained layout) "
                             "or a hub id (owner/name)") from None
        where = "local folder" if os.path.isdir(path_s) else "hub id"
        hint = " (HF_HUB_OFFLINE=1 is set: only already-cached hub ids load)" if offline and where == "hub id" else ""
        raise InputError(f"could not load a vision-language model from {where} {path_s!r}{hint}: {e}") from e
    if quantization is None and device != "auto":
        model = model.to(device)
    model.eval()
    try:
        processor = load_processor(path_s, trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load the processor from {path_s!r}: {e}") from e
    return model, processor
