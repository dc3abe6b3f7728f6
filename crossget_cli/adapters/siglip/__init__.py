"""SigLIP: open_clip's (``openclip-siglip``) and transformers' (``hf-siglip``)
SigLIP models. They fine-tune with the ``clip`` objective, whose task loss is
then SigLIP's sigmoid loss (:meth:`~crossget_cli.adapters.base.Adapter.contrastive_loss`)."""

from crossget_cli.adapters.siglip.adapter import OpenClipSiglipAdapter
from crossget_cli.adapters.siglip.hf import HFSiglipAdapter

__all__ = ["HFSiglipAdapter", "OpenClipSiglipAdapter"]
