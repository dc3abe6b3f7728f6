"""What a loaded model needs to turn images and text into features: its own image
preprocessing (open_clip transforms, a transformers image processor) and its
tokenizer, never hand-rolled; and batched, device-placed encoding."""

from __future__ import annotations


import torch

from crossget_cli.adapters.registry import find_adapter
from crossget_cli.adapters.model_io import OPEN_CLIP, LoadedModel, ModelIO
from crossget_cli.errors import CrossGetError
from crossget_cli.loading.formats import parse_dtype


def model_io(loaded: LoadedModel, device: str = "cpu", dtype: str = "fp32") -> ModelIO:
    """Move ``loaded.model`` to ``device``/``dtype`` (eval mode) and pair it with
    its preprocessing and tokenizer."""
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise CrossGetError(f"device {device!r} requested but CUDA is not available", "use --device cpu")
    torch_dtype = parse_dtype(dtype)
    loaded.model.to(torch_device, torch_dtype).eval()
    if loaded.checkpoint_format == OPEN_CLIP:
        transform, tokenize = _openclip_preprocessing(loaded)
    else:
        transform, tokenize = _hf_preprocessing(loaded)
    return ModelIO(loaded, transform, tokenize, torch_device, torch_dtype)


def _openclip_preprocessing(loaded: LoadedModel):
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    visual = loaded.model.visual
    size = visual.image_size
    cfg = {"size": size, **(getattr(visual, "preprocess_cfg", None) or {})}
    fields = PreprocessCfg.__dataclass_fields__
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in fields}), is_train=False)

    owner = loaded.model if hasattr(loaded.model, "token_embedding") else loaded.model.text
    context = owner.context_length
    text_cfg = (loaded.model_config or {}).get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        # tokenizer_kwargs: e.g. SigLIP's text cleaning ("canonicalize"), as open_clip's get_tokenizer passes them
        kwargs = text_cfg.get("tokenizer_kwargs") or {}
        tokenizer = open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context, **kwargs)
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        vocab = owner.vocab_size
        if vocab < len(tokenizer.encoder):
            raise CrossGetError(
                f"the model's vocabulary ({vocab}) is smaller than CLIP's BPE tokenizer ({len(tokenizer.encoder)})",
                "use a model trained with open_clip's tokenizer",
            )
    return transform, lambda texts: tokenizer(list(texts))


def _hf_preprocessing(loaded: LoadedModel):
    processor = loaded.image_processor
    if processor is None:
        from transformers import CLIPImageProcessor

        inputs = find_adapter(loaded.model).inputs(loaded.model)
        size = inputs.image_size or 224
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def transform(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenize(texts):
        tokenizer = loaded.tokenizer
        if tokenizer is None:
            raise CrossGetError(
                f"no tokenizer was saved with {loaded.source}",
                "save one next to the model (tokenizer.save_pretrained(folder)) or use an HF id that has one",
            )
        context = find_adapter(loaded.model).inputs(loaded.model).context_length
        return tokenizer(list(texts), padding="max_length", truncation=True, max_length=context, return_tensors="pt")["input_ids"]

    return transform, tokenize
