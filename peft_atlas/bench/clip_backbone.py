"""The CLIP backbone of a vision-language run: an open_clip model (pretrained tag, local
checkpoint, or random), a custom `open_clip.CLIP`, or the VLM-micro CLIP.

Every way the backbone cannot be built from the config raises
[`BackboneError`][peft_atlas.bench.backbone.BackboneError], naming the model or the file.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..measured import BackboneWeightsRecord
from .backbone import BackboneError, load_state_dict
from .config import ClipBackboneConfig
from .micro import CheckpointHashError, file_sha256

__all__ = ["build_clip", "clip_weights_record"]


def _open_clip():  # noqa: ANN202 - the module
    try:
        import open_clip
    except ImportError:
        raise BackboneError("CLIP backbones need open_clip: pip install open_clip_torch (the project's `vlm` "
                            "extra)") from None
    return open_clip


def build_clip(config: ClipBackboneConfig) -> nn.Module:
    """Create the CLIP model of `config` with its weights, in eval mode (no method applied).

    Args:
        config: The backbone section.

    Raises:
        BackboneError: If open_clip is missing, rejects the model or cannot download its weights,
            a checkpoint is missing, unreadable or does not fit, or the committed VLM-micro file
            does not match its hash.
    """
    open_clip = _open_clip()
    if config.clip == "vlm-micro":
        from .vlm_micro import build_vlm_micro, recipe_config, vlm_micro_weights

        recipe = recipe_config(config.recipe)
        try:
            return build_vlm_micro(vlm_micro_weights(recipe).path, recipe)
        except (CheckpointHashError, ValueError) as error:
            raise BackboneError(str(error)) from None
    described = f"CLIP {config.clip}" + (f" {config.model_cfg}" if config.model_cfg else "")
    try:
        if config.clip == "custom":
            model = open_clip.CLIP(**(config.model_cfg or {}))
        else:
            model = open_clip.create_model(config.clip, pretrained=config.pretrained)
    except (TypeError, ValueError, KeyError, OSError, RuntimeError) as error:  # bad arguments, a failed download
        raise BackboneError(f"cannot create {described}" + (f" with pretrained {config.pretrained!r}" if config.pretrained
                                                            else "") + f": {type(error).__name__}: {error}") from None
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        state = load_state_dict(path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatch
            raise BackboneError(f"{path}: checkpoint does not fit {described}: {error}") from None
        if missing or unexpected:
            raise BackboneError(f"{path}: checkpoint does not fit {described}: missing {missing[:5]}"
                                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                                f"{'...' if len(unexpected) > 5 else ''}")
    return model.eval()


def clip_weights_record(config: ClipBackboneConfig) -> BackboneWeightsRecord | None:
    """The weights file a CLIP backbone loads, by content (None for random weights, or an open_clip
    download whose file cannot be located)."""
    if config.clip == "vlm-micro":
        from .vlm_micro import recipe_config, vlm_micro_weights

        weights = vlm_micro_weights(recipe_config(config.recipe))
        return BackboneWeightsRecord(checkpoint="vlm-micro", sha256=weights.sha256, origin=weights.origin,
                                     key=weights.key)
    if config.checkpoint is not None:
        return BackboneWeightsRecord(checkpoint=config.checkpoint, sha256=file_sha256(Path(config.checkpoint)),
                                     origin="file")
    if config.pretrained is not None:
        open_clip = _open_clip()
        try:  # the file open_clip downloaded when the model was built (found again in its cache)
            path = Path(open_clip.pretrained.download_pretrained(
                open_clip.get_pretrained_cfg(config.clip, config.pretrained)))
        except Exception:  # noqa: BLE001 - a cache layout open_clip may change; the record is optional
            return None
        if path.is_file():
            return BackboneWeightsRecord(checkpoint=f"{config.clip}/{config.pretrained}", sha256=file_sha256(path),
                                         origin="open_clip")
    return None
