"""Turning a ``--model`` string into a model: hub ids, local folders, open_clip
names/tags, OpenAI-style files (:mod:`.models`, :mod:`.formats`, :mod:`.hub`),
exported folders (:mod:`.exported`), and the model's own preprocessing
(:mod:`.preprocessing`)."""
