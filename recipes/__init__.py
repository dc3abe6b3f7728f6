"""The recipes shipped with crossget, installed as ``crossget_cli.builtin_recipes``
(see setup.py): ``crossget compress --recipe clip_vit_b16_rv16`` loads
``clip_vit_b16_rv16.yaml`` from here."""
