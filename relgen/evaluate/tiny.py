"""Tiny random-weight metric models, written with ``save_pretrained`` for offline tests and the
throughput benchmark. Each loads through the same ``from_pretrained`` path as the real model.

Tokenizers and processors are built in-process: CLIP's BPE from
:mod:`relgen.data._tiny_tokenizer`, LLaVA's word-level tokenizer with the ``tokenizers`` library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from relgen.data._tiny_tokenizer import DEFAULT_WORDS, write_tiny_clip_tokenizer

#: Words of the tiny tokenizers besides the prompt vocabulary.
_JUDGE_WORDS = ("yes", "no", "neither", "there", "is", "any", "in", "the", "image", "are", "both", "and",
                "present", "can", "you", "infer", "relationship", "that", "exists", "between", "or", "a",
                "an", "of", "photo", "on", "above", "below", "left", "right", "inside", "next", "to", "top",
                "first", "second", "?", ".", ",")


def _clip_tokenizer_dir(folder: Path, words: Iterable[str]) -> "object":
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(folder / "_tok", list(DEFAULT_WORDS) + list(words))
    return CLIPTokenizer.from_pretrained(folder / "_tok")


def write_tiny_clip(folder: str | Path, seed: int = 0, words: Iterable[str] = (), image_size: int = 32) -> Path:
    """A tiny ``CLIPModel`` + ``CLIPProcessor`` folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = _clip_tokenizer_dir(folder, words)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_tiny_vit(folder: str | Path, seed: int = 0, kind: str = "dino", image_size: int = 32) -> Path:
    """A tiny DINO (``ViTModel``, as ``facebook/dino-vits16``) or DINOv2 (``Dinov2Model``) folder."""
    from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  image_size=image_size, patch_size=8)
    if kind == "dino":
        ViTModel(ViTConfig(**common), add_pooling_layer=False).eval().save_pretrained(folder)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    elif kind == "dinov2":
        Dinov2Model(Dinov2Config(**common)).eval().save_pretrained(folder)
        from transformers import BitImageProcessor

        BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                          do_convert_rgb=True).save_pretrained(folder)
    else:
        raise ValueError(f"kind '{kind}': dino or dinov2")
    AutoImageProcessor.from_pretrained(folder)  # checks the folder loads the way the metric loads it
    return folder


def write_tiny_owlv2(folder: str | Path, seed: int = 0, words: Iterable[str] = (), image_size: int = 32) -> Path:
    """A tiny ``Owlv2ForObjectDetection`` + ``Owlv2Processor`` folder."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    folder = Path(folder)
    tokenizer = _clip_tokenizer_dir(folder, words)
    tokenizer.model_max_length = 16  # OWL's text length
    torch.manual_seed(seed)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=37,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=32)  # OWL's class head needs projection_dim == text hidden size
    Owlv2ForObjectDetection(config).eval().save_pretrained(folder)
    image_processor = Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


#: LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT: ..."), written as a chat
#: template for the tiny judge (real LLaVA-1.5 and Qwen2-VL processors ship their own).
TINY_LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def write_tiny_llava(folder: str | Path, seed: int = 0, words: Iterable[str] = (), image_size: int = 32) -> Path:
    """A tiny ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) + ``LlavaProcessor``
    folder with a word-level tokenizer over the questions' and prompts' words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER", "ASSISTANT", ":"]
    vocab_words: list[str] = []
    for w in list(_JUDGE_WORDS) + [x for w in words for x in w.lower().split()]:
        if w not in vocab_words and w not in specials:
            vocab_words.append(w)
    vocab = {t: i for i, t in enumerate(specials + vocab_words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    patch = 8
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=TINY_LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=image_size, patch_size=patch, hidden_size=32,
                           intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=16),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1, pad_token_id=tokenizer.pad_token_id)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def prompt_words(prompts: Iterable[object]) -> list[str]:
    """Every word of the prompts' readable texts, entities and predicates (tiny vocabularies)."""
    out: list[str] = []
    for p in prompts:
        for text in (p.readable, p.twin, p.a, p.b, p.predicate):
            out += text.lower().split()
    return out


__all__ = ["prompt_words", "write_tiny_clip", "write_tiny_llava", "write_tiny_owlv2", "write_tiny_vit"]
