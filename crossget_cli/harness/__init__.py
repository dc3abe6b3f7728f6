"""Running crossget models inside other evaluation tools, and writing results in their
formats: one module per tool, each importing the tool (an optional dependency) itself:
:mod:`.lmms_eval` (an lmms-eval model plugin), :mod:`.clip_benchmark` (LAION's
CLIP_benchmark: its result format and a model loader). A jobs layer: it uses loading,
adapters and evaluation; only the CLI imports it."""
