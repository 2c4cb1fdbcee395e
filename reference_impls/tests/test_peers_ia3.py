"""(IA)^3 against HF PEFT's IA3 with configurations that correspond exactly.

HF PEFT's IA3 scales the whole output of each targeted module, or its whole input for modules
also listed in `feedforward_modules`. Ours does the same for whole layers (`targets`,
`feedforward`) and can in addition scale only the `"q"`, `"k"`, `"v"` thirds of the fused
`attn.qkv` output. The mapping:

- ours `targets=("qkv", "fc2"), feedforward=("fc2",)` is HF `target_modules=["qkv", "fc2"],
  feedforward_modules=["fc2"]`: the vectors are the same tensors (HF stores them as
  `(out, 1)` for output scaling and `(1, in)` for input scaling);
- our `"q"`, `"k"`, `"v"` vectors, concatenated, are HF's vector on the fused `qkv`, so targeting
  all three thirds is HF's `"qkv"` target exactly;
- the paper's placement (our default, `("k", "v", "fc2")`) is HF's `"qkv"` vector with its query
  third fixed at 1 (test_peers.py::test_ia3_matches_hf).
"""

from __future__ import annotations

import pytest
import torch

import reference_impls as ri
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, TOL, batch, build, perturb

peft = pytest.importorskip("peft")

MAPPINGS = {
    # ours (targets, feedforward) -> HF (target_modules, feedforward_modules)
    "qkv-fc2": ((("qkv", "fc2"), ("fc2",)), (["qkv", "fc2"], ["fc2"])),
    "slices-all-ff-fc1-fc2": (
        (("q", "k", "v", "proj", "fc1", "fc2"), ("fc1", "fc2")),
        # a regex: HF's plain name "proj" would also match patch_embed.proj
        (r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)", r"blocks\.\d+\.mlp\.fc[12]"),
    ),
}


def our_vector(module: Wrapper) -> torch.Tensor:
    """Our scaling vector of one layer over its whole output (q, k, v concatenated) or input."""
    vectors = module.peft_ia3
    if "all" in vectors:
        return vectors["all"]
    return torch.cat([vectors[p] for p in ("q", "k", "v") if p in vectors])


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("mapping", list(MAPPINGS))
def test_ia3_config_mapping_matches_hf(backbone: str, mapping: str) -> None:
    (targets, feedforward), (hf_targets, hf_feedforward) = MAPPINGS[mapping]
    ours = ri.apply(build(backbone), "ia3", targets=targets, feedforward=feedforward)
    perturb(ours)
    config = peft.IA3Config(target_modules=hf_targets, feedforward_modules=hf_feedforward)
    theirs = peft.get_peft_model(build(backbone), config).eval()
    params = dict(theirs.named_parameters())
    wrappers = {n: m for n, m in ours.named_modules() if isinstance(m, Wrapper)}
    hf_layers = [n for n in params if n.endswith(".ia3_l.default")]
    assert len(hf_layers) == len(wrappers)
    with torch.no_grad():
        for name, module in wrappers.items():
            hf = params[f"base_model.model.{name}.ia3_l.default"]
            # HF: (out, 1) for an output scaling, (1, in) for an input (feedforward) scaling
            layer = module.base_layer
            assert hf.shape == ((1, layer.in_features) if module.scale_input else (layer.out_features, 1))
            hf.copy_(our_vector(module).reshape(hf.shape))
        for head in ("head", "head_dist"):
            if hasattr(ours, head):
                theirs.base_model.model.get_submodule(head).load_state_dict(getattr(ours, head).state_dict())
    images, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), atol=TOL["peer"], rtol=0.0)
        ri.merge(ours, unload=True)
        torch.testing.assert_close(ours(images), theirs.merge_and_unload()(images), atol=TOL["peer"], rtol=0.0)


def test_our_vectors_cover_what_hf_trains() -> None:
    """Same number of scaling entries on both sides for the exact mappings."""
    for (targets, feedforward), (hf_targets, hf_feedforward) in MAPPINGS.values():
        ours = ri.apply(build(), "ia3", targets=targets, feedforward=feedforward)
        config = peft.IA3Config(target_modules=hf_targets, feedforward_modules=hf_feedforward)
        theirs = peft.get_peft_model(build(), config)
        ours_count = sum(p.numel() for n, p in ours.named_parameters() if "peft_ia3" in n)
        assert ours_count == sum(p.numel() for n, p in theirs.named_parameters() if "ia3_l" in n)
