"""Task metrics in plain Python, numerically matching the reference evaluation code:
COCO captioning (BLEU, CIDEr, ROUGE-L; METEOR/SPICE through pycocoevalcap) and
VQAv2 accuracy."""

from crossget_cli.metrics.caption import bleu, caption_scores, cider_d, rouge_l
from crossget_cli.metrics.ptb_tokenizer import tokenize_caption, tokenize_captions
from crossget_cli.metrics.vqa import load_vqa_annotations, load_vqa_questions, normalize_answer, vqa_accuracy

__all__ = [
    "bleu",
    "caption_scores",
    "cider_d",
    "load_vqa_annotations",
    "load_vqa_questions",
    "normalize_answer",
    "rouge_l",
    "tokenize_caption",
    "tokenize_captions",
    "vqa_accuracy",
]
