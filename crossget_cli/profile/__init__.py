"""``crossget profile`` as a library: speed and memory sweeps (:mod:`.speed`; their
results in :mod:`.results`, measuring pieces in :mod:`.timing`, plots in
:mod:`.plot`), FLOPs (:mod:`.flops`), generation timing (:mod:`.generation`) and
the reduction report (:mod:`.report`)."""
