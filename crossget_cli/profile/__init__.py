"""``crossget profile`` as a library: speed and memory sweeps (:mod:`.speed`),
FLOPs (:mod:`.flops`), generation timing (:mod:`.generation`) and the reduction
report (:mod:`.report`)."""
