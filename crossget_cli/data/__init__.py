"""Evaluation and training data in the formats users have: Karpathy/BLIP JSON,
CSV/JSONL, ImageFolder, HF datasets, VQAv2, multiple choice (:mod:`.formats`,
:mod:`.choice`), and the built-in shapes benchmark (:mod:`.shapes`)."""
