"""FacT-specific checks: the slice layout against the official computation, the shared factors
(one module, plain references), initialization, and the parameter counts of the paper."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

import reference_impls as ri
from reference_impls.methods.fact import FacTFactors, FacTLinear

from .common import Case, applied, batch, build, perturb
from .reported import added_parameters, in_millions


def wrappers(model: torch.nn.Module) -> dict[str, FacTLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FacTLinear)}


def tokens(width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, width, generator=torch.Generator().manual_seed(seed))


def official_tt_update(layer: FacTLinear, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The increment as the official FacT-TT code computes it, with its modules rebuilt from ours:
    `FacTu` (d -> r) has weight V^T, `FacTv` (r -> d) weight U, and each layer's core maps are
    `nn.Linear`s (qkv: one r x r map per third; fc1: r -> 4r, output split in 4; fc2: 4r -> r over
    the 4 projected input chunks)."""
    U, V, s = layer.factors.U, layer.factors.V, layer.scale
    cores = layer.peft_fact_cores

    def fact_u(t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, V.T)

    def fact_v(t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, U)

    if kind == "qkv":
        return torch.cat([fact_v(F.linear(fact_u(x), cores[i, 0])) for i in range(3)], dim=-1) * s
    if kind == "proj":
        return fact_v(F.linear(fact_u(x), cores[0, 0])) * s
    d, r = U.shape
    if kind == "fc1":
        fc1_s = torch.cat([cores[o, 0] for o in range(4)], dim=0)  # weight of nn.Linear(r, 4r)
        return fact_v(F.linear(fact_u(x), fc1_s).reshape(*x.shape[:-1], 4, r)).reshape(*x.shape[:-1], 4 * d) * s
    fc2_s = torch.cat([cores[0, b] for b in range(4)], dim=1)  # weight of nn.Linear(4r, r)
    projected = fact_u(x.reshape(*x.shape[:-1], 4, d)).reshape(*x.shape[:-1], 4 * r)
    return fact_v(F.linear(projected, fc2_s)) * s


def test_tt_matches_official_computation() -> None:
    model = ri.apply(build(), "fact", r=3, scale=2.5)
    perturb(model, scale=0.5)
    with torch.no_grad():
        for name, layer in wrappers(model).items():
            kind = name.rsplit(".", 1)[1]
            x = tokens(layer.base_layer.in_features)
            torch.testing.assert_close(layer(x) - layer.base_layer(x), official_tt_update(layer, kind, x))


def released_tk_update(layer: FacTLinear, kind: str, x: torch.Tensor) -> torch.Tensor:
    """The increment as the released FacT-TK code computes it (`FacT/fact_tk.py`, lines 59-104, of
    github.com/JieShibo/PETL-ViT), with its modules rebuilt from ours: `FacTu` (d -> r) has weight
    V^T, `FacTv` (r -> d) weight U, `FacTc` is C, and the layer's columns of `FacTp` are its rows
    of P. The mixed cores are `FacTc @ FacTp[:, j]`. q, k, v, proj and fc1 right-multiply the
    projected input by them, `(FacTu x) @ M_j`; fc2 right-multiplies the projected hidden chunks
    by the transposed mixed cores. The released code lays an MLP layer's mixed cores side by side
    in an order that interleaves rank and slice indices (a documented difference); here they are
    side by side in slice order, which is the released layout exactly when the MLP hidden width
    is one block (its reshapes to blocks then do nothing)."""
    U, V, C, s = layer.factors.U, layer.factors.V, layer.factors.C, layer.scale
    d, r = U.shape

    def fact_u(t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, V.T)

    def fact_v(t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, U)

    columns = layer.peft_fact_P.flatten(0, 1).T  # this layer's columns of the released r x 12L matrix
    mixed = C @ columns  # (r, r, slices)
    if kind == "qkv":
        return s * torch.cat([fact_v(fact_u(x) @ mixed[:, :, j]) for j in range(3)], dim=-1)
    if kind == "proj":
        return s * fact_v(fact_u(x) @ mixed[:, :, 0])
    blocks = mixed.shape[-1]
    side_by_side = torch.cat([mixed[:, :, j] for j in range(blocks)], dim=1)  # (r, blocks r)
    if kind == "fc1":
        projected = (fact_u(x) @ side_by_side).unflatten(-1, (blocks, r))
        return s * fact_v(projected).flatten(-2)
    chunks = fact_u(x.unflatten(-1, (blocks, d))).flatten(-2)  # (..., blocks r)
    # fc2: the transposed mixed cores
    return s * fact_v(chunks @ side_by_side.T)


@pytest.mark.parametrize("mlp_ratio", [1.0, 4.0])
def test_tk_matches_released_computation(mlp_ratio: float) -> None:
    """Every adapted layer, fc2 included, against the released formulas: exact for attention, and
    for the MLP with one hidden block (mlp_ratio 1) or with the slices in slice order (4 blocks)."""
    model = ri.apply(build(mlp_ratio=mlp_ratio), "fact", form="tk", r=3, scale=0.5, dropout=0.0)
    perturb(model, scale=0.5)
    with torch.no_grad():
        for name, layer in wrappers(model).items():
            kind = name.rsplit(".", 1)[1]
            assert layer.input_rank_first == (kind != "fc2")
            x = tokens(layer.base_layer.in_features)
            torch.testing.assert_close(layer(x) - layer.base_layer(x), released_tk_update(layer, kind, x))


def test_tk_fc2_direction_differs_from_the_other_layers() -> None:
    """By hand for one token: in the released code fc2's mixed core maps with its first axis on the
    output rank, y_a = sum_k M[a, k] z_k, where q maps with it on the input rank,
    y_k = sum_a z_a M[a, k]. The two directions give different increments of the same C and P."""
    model = ri.apply(build(mlp_ratio=1.0), "fact", form="tk", r=3, scale=1.0, dropout=0.0, targets=("q", "fc2"))
    perturb(model, scale=0.5)
    layers = {name.split(".", 2)[2]: layer for name, layer in wrappers(model).items() if name.startswith("blocks.0.")}
    qkv, fc2 = layers["attn.qkv"], layers["mlp.fc2"]
    U, V, C = model.peft_fact.U, model.peft_fact.V, model.peft_fact.C
    x = tokens(32)[0, 0]
    z = V.T @ x  # FacTu x
    with torch.no_grad():
        for layer, first_axis in ((qkv, "input"), (fc2, "output")):
            p = layer.peft_fact_P[0, 0]  # the layer's column of FacTp
            m = torch.einsum("ikt,t->ik", C, p)  # FacTc @ FacTp[:, j]
            y = torch.stack([sum(z[a] * m[a, k] for a in range(3)) for k in range(3)])  # y_k = sum_a z_a M[a, k]
            if first_axis == "output":
                y = torch.stack([sum(m[a, k] * z[k] for k in range(3)) for a in range(3)])  # y_a = sum_k M[a, k] z_k
            delta = layer(x) - layer.base_layer(x)
            torch.testing.assert_close(delta[:32], U @ y)
            # the other direction gives another increment: the test sees the direction
            other = U @ (m @ z if first_axis == "input" else m.T @ z)
            assert (delta[:32] - other).abs().max() > 1e-3


@pytest.mark.parametrize("form", ["tt", "tk"])
def test_factors_are_one_module_shared_by_reference(form: str, tmp_path) -> None:
    model = applied(Case("fact", {"form": form, "r": 2}))
    factors = model.peft_fact
    assert isinstance(factors, FacTFactors)
    assert all(layer.factors is factors for layer in wrappers(model).values())
    # registered once: no wrapper owns the factors, the state dict and the adapter file hold them once
    assert [k for k in model.state_dict() if k.endswith((".U", ".V", ".C"))] == [
        f"peft_fact.{p}" for p in ("U", "V", "C") if getattr(factors, p) is not None
    ]
    path = tmp_path / "fact.safetensors"
    ri.save_adapter(model, path)
    fresh = ri.load_adapter(build(), path)
    assert all(layer.factors is fresh.peft_fact for layer in wrappers(fresh).values())
    # moving the model keeps the references valid
    model.to(torch.float64)
    images, _ = batch()
    assert model(images.double()).dtype == torch.float64
    assert all(layer.factors.U.dtype == torch.float64 for layer in wrappers(model).values())


def test_layout_of_slices() -> None:
    model = ri.apply(build(), "fact", r=2, targets=("q", "v", "fc1", "fc2"))
    layers = {name.split(".", 2)[2]: layer for name, layer in wrappers(model).items() if name.startswith("blocks.0.")}
    assert {k: (v.num_out, v.num_in, v.adapted) for k, v in layers.items()} == {
        "attn.qkv": (3, 1, [0, 2]),
        "mlp.fc1": (4, 1, [0, 1, 2, 3]),
        "mlp.fc2": (1, 4, [0]),
    }
    assert tuple(layers["attn.qkv"].peft_fact_cores.shape) == (2, 1, 2, 2)
    perturb(model)
    with torch.no_grad():
        delta = layers["attn.qkv"].delta_weight()
    d = model.embed_dim
    assert torch.count_nonzero(delta[d : 2 * d]) == 0  # the key third is not adapted
    assert torch.count_nonzero(delta[:d]) > 0 and torch.count_nonzero(delta[2 * d :]) > 0


def test_official_initialization() -> None:
    model = ri.apply(build(), "fact", r=4)
    factors, d = model.peft_fact, model.embed_dim
    assert torch.count_nonzero(factors.U) == 0
    assert factors.V.abs().max() <= 1 / math.sqrt(d)
    fc2 = model.blocks[0].mlp.fc2
    assert fc2.peft_fact_cores.abs().max() <= 1 / math.sqrt(4 * 4)  # nn.Linear(4r, r)
    tk = ri.apply(build(), "fact", form="tk", r=4)
    assert tk.peft_fact.C.abs().max() <= math.sqrt(6 / (2 * 4 * 4))
    slices = 12 * len(tk.blocks)
    assert max(layer.peft_fact_P.abs().max() for layer in wrappers(tk).values()) <= math.sqrt(6 / (slices + 4))


def test_widths_not_multiple_of_d_refused() -> None:
    with pytest.raises(ValueError, match=r"'blocks.0.mlp.fc1' \(112 x 32\) cannot be cut into 32 x 32 slices"):
        ri.apply(build(mlp_ratio=3.5), "fact")


# FacT, Table 1 (ViT-B/16, VTAB-1k): params_m counts backbone parameters only (head excluded);
# test_reported_presets.py recomputes every row from the presets.


@pytest.mark.parametrize("preset", ["vtab-1k-tt4", "vtab-1k-tk8"])
def test_fixed_rank_count_formula(preset: str) -> None:
    options = ri.get_preset("fact", preset).options
    r, d = options["r"], 768
    # TT: 2 d r + 12 L r^2; TK: 2 d r + r^3 + 12 L r
    expected = 2 * d * r + (144 * r * r if options["form"] == "tt" else r**3 + 144 * r)
    assert added_parameters("fact", preset=preset) == expected


def test_mean_over_tasks_would_not_match_tt() -> None:
    """The caption's convention matters: averaged over the 19 per-task presets directly, instead of
    over the three group means, FacT-TT_{<=16} prints 0.040, not 0.037."""
    names = [name for name in ri.list_presets("fact") if name.startswith("vtab-1k-tt/")]
    assert len(names) == 19
    plain = statistics.fmean(added_parameters("fact", preset=name) for name in names)
    assert in_millions(plain, "0.037") == "0.040"
