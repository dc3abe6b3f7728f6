"""``crossget eval`` as a library: retrieval, zero-shot, captioning, VQA and
multiple choice on a loaded model (:mod:`.runner`)."""
