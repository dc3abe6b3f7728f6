"""Training: the fine-tuning loop (:mod:`.loop`), CoOp prompt learning
(:mod:`.coop`) and ``crossget train`` (:mod:`.native`)."""
