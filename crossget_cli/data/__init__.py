"""Evaluation and training data in the formats users have, read into uniform, lazily loaded records.

Shared layers: image references and datasets (:mod:`.images`), record files (:mod:`.records`),
files, folders, hub names and HF datasets (:mod:`.sources`). One module per task: retrieval from
Karpathy/BLIP JSON, CSV/JSONL or HF datasets (:mod:`.retrieval`), captioning (:mod:`.captions`),
classification from ImageFolder trees, records or HF datasets, and prompt templates
(:mod:`.classification`), VQAv2 (:mod:`.vqa`), multiple choice (:mod:`.choice`). The built-in
shapes benchmark: easy-VQA source images (:mod:`.easy_vqa`), the composites (:mod:`.shapes`), and
their files and cache behind ``builtin:`` data strings (:mod:`.builtin`).

Problems a user can fix raise :class:`~crossget_cli.errors.CrossGetError` naming the
file, key or column and the fix.
"""
