"""``crossget compress`` as a library: load, patch, optionally fine-tune, export."""
