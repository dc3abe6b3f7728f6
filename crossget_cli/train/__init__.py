"""Training: the fine-tuning loop (:mod:`.loop`) that runs every registered
objective (``clip``, ``coop``, the families'). ``crossget train`` (train, then save in
the model's own format) is an export job: :mod:`crossget_cli.export.native`."""
