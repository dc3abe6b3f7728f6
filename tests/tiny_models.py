"""Test helpers around the tiny random models the adapters build in code
(``Adapter.tiny_models``, each family's ``tiny.py``): the OpenAI -> HF state-dict
conversion that SPEC §9 describes and the golden-file models, for parity tests;
tiny models saved to folders the way their libraries save them, with tokenizers and
image processors, for end-to-end runs; random inputs and test images."""

from __future__ import annotations

import torch
from transformers import CLIPModel

from crossget_cli.adapters.hf_clip.tiny import hf_tiny, hf_tiny_config
from crossget_cli.adapters.llava.tiny import WORDS, tiny_llava
from crossget_cli.adapters.openclip.tiny import TINY, openclip_tiny

#: An OpenAI-style checkpoint of TINY: OpenAI checkpoints carry no head count,
#: so loading one gives both towers width // 64 heads.
OPENAI_TINY = dict(TINY, transformer_heads=1)


_LAYER_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def openai_to_hf(state_dict: dict) -> dict:
    """OpenAI-CLIP names -> transformers ``CLIPModel`` names (SPEC §9). Cross
    tokens move to ``{vision,text}_model.encoder.cross_{image,text}``."""
    out = {}
    for name, value in state_dict.items():
        if name.startswith("visual.transformer.resblocks."):
            prefix, rest = "vision_model.encoder.layers.", name[len("visual.transformer.resblocks.") :]
        elif name.startswith("transformer.resblocks."):
            prefix, rest = "text_model.encoder.layers.", name[len("transformer.resblocks.") :]
        else:
            prefix = None
        if prefix is not None:
            index, rest = rest.split(".", 1)
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}{index}.self_attn.{proj}.{kind}"] = chunk.clone()
                continue
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
            out[f"{prefix}{index}.{rest}"] = value
            continue
        simple = {
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
            "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "visual.ln_post.weight": "vision_model.post_layernorm.weight",
            "visual.ln_post.bias": "vision_model.post_layernorm.bias",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
            "logit_scale": "logit_scale",
            "visual.transformer.cross_image": "vision_model.encoder.cross_image",
            "transformer.cross_text": "text_model.encoder.cross_text",
        }
        if name in simple:
            out[simple[name]] = value
        elif name == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif name == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
    return out


def golden_openclip(golden: dict, variant: dict):
    """The tiny open_clip model with the golden file's weights, patched as
    ``variant`` says (SPEC §9); returns ``(model, encode_image, encode_text)``."""
    import crossget_cli

    model = openclip_tiny()
    state = golden["state_dict"]
    if variant["reduce"] == "ours":
        crossget_cli.patch(model, vision_r=variant["rv"], text_r=variant["rl"])
    else:
        state = {k: v for k, v in state.items() if "cross" not in k}
    model.load_state_dict(state)  # official names load as they are
    return model, model.encode_image, model.encode_text


def golden_hf(golden: dict, variant: dict, attn_implementation: str = "sdpa"):
    """:func:`golden_openclip` for the transformers ``CLIPModel`` (weights
    converted with :func:`openai_to_hf`)."""
    import crossget_cli

    model = hf_tiny(attn_implementation=attn_implementation)
    state = openai_to_hf(golden["state_dict"])
    if variant["reduce"] == "ours":
        crossget_cli.patch(model, vision_r=variant["rv"], text_r=variant["rl"])
    else:
        state = {k: v for k, v in state.items() if "cross" not in k}
    model.load_state_dict(state)
    return (
        model,
        lambda images: model.get_image_features(pixel_values=images).pooler_output,
        lambda ids: model.get_text_features(input_ids=ids).pooler_output,
    )


def random_images(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


def random_texts(lengths: list[int], context: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Token ids with SOT = vocab-2 first, EOT = vocab-1 last, zero padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = vocab - 2
        ids[row, 1 : length - 1] = torch.randint(1, vocab - 2, (length - 2,), generator=gen)
        ids[row, length - 1] = vocab - 1
    return ids


# -- tiny models with CLIP's real BPE vocabulary, for end-to-end evaluation ---------

BPE_TINY = dict(TINY, vocab_size=49408)


def save_openclip_folder(folder, cfg: dict = BPE_TINY, seed: int = 0):
    """A tiny open_clip model saved as open_clip saves one (``open_clip_config.json``
    + ``open_clip_model.safetensors``); returns the in-memory model."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = openclip_tiny(cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": cfg["embed_dim"],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": cfg["image_resolution"],
            "layers": cfg["vision_layers"],
            "width": cfg["vision_width"],
            "patch_size": cfg["vision_patch_size"],
        },
        "text_cfg": {
            "context_length": cfg["context_length"],
            "vocab_size": cfg["vocab_size"],
            "width": cfg["transformer_width"],
            "heads": cfg["transformer_heads"],
            "layers": cfg["transformer_layers"],
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return model


def clip_bpe_tokenizer(folder):
    """A transformers ``CLIPTokenizer`` built offline from open_clip's copy of
    CLIP's BPE vocabulary, saved into ``folder``."""
    import json
    from pathlib import Path

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def save_hf_folder(folder, cfg: dict = BPE_TINY, seed: int = 0):
    """A tiny ``CLIPModel`` with tokenizer and image processor, saved with
    ``save_pretrained`` as a hub checkpoint is."""
    from transformers import CLIPImageProcessor

    torch.manual_seed(seed)
    config = hf_tiny_config(cfg, attn_implementation="sdpa")
    config.text_config.bos_token_id, config.text_config.eos_token_id = 49406, 49407
    model = CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    clip_bpe_tokenizer(folder)
    size = cfg["image_resolution"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(str(folder))
    return model


#: Solid colours for small real test images.
RGB = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "blue": (30, 30, 220),
    "yellow": (240, 230, 30),
    "purple": (140, 30, 160),
    "orange": (250, 140, 0),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
}


# --------------------------------------------------------------------------- LLaVA


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<image>"],
    )


def save_tiny_llava(folder, **kwargs):
    from transformers import CLIPImageProcessor

    model = tiny_llava(**kwargs)
    model.save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(str(folder))
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(str(folder))
    return folder
