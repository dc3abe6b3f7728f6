"""The model hub, offline: whether it answers (one cached probe), whether an
open_clip tag is already cached, and the hint a failed download gets."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path


def openclip_tag_cached(name: str, tag: str) -> bool:
    """Whether the weights of an open_clip pretrained tag are on disk already
    (HF cache for hub-hosted tags, open_clip's download folder for URL ones)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return True  # an unknown tag: open_clip's own error says so
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith(".bin"):
            candidates.insert(0, filename[: -len(".bin")] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in candidates)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


@contextlib.contextmanager
def hub_offline(offline: bool):
    """``HF_HUB_OFFLINE`` semantics for the duration: hub lookups answer from the cache."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked at all: not in offline mode
    (``HF_HUB_OFFLINE``) and its endpoint answers within 1.5 s. The endpoint is
    asked once per process, so that an offline machine fails in a second instead
    of retrying."""
    from huggingface_hub import constants

    return not constants.is_offline_mode() and _answers(constants.ENDPOINT)


@functools.cache
def _answers(endpoint: str) -> bool:
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=1.5)
    except Exception:  # DNS, refused, timeout, proxy: all mean "not now"
        return False
    return True


def is_network_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    return bool(
        names
        & {
            "ConnectionError",
            "LocalEntryNotFoundError",
            "OfflineModeIsEnabled",
            "HfHubHTTPError",
            "ConnectError",
            "MaxRetryError",
        }
    )


def _chain(err: BaseException | None):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def offline_hint() -> str:
    return "without network access, pass a local folder or checkpoint file (or --pretrained none for random weights)"
