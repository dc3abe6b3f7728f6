"""Running crossget models inside other evaluation harnesses, and writing results in
their formats: :mod:`.clip_benchmark` (LAION's CLIP_benchmark). A jobs layer: it
uses loading and evaluation; only the CLI imports it."""
