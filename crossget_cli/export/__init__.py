"""Exports: ``crossget compress`` as a library (:mod:`.compress`: load, patch, optionally
fine-tune, export) and ``crossget train`` (:mod:`.native`: train, save in the model's own format)."""
