"""The invariant matrix: every case of `CASES` x every tiny backbone x one test per invariant."""

from __future__ import annotations

import re

import pytest
import torch

import reference_impls as ri
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, CASES, TOL, Case, applied, batch, build, other_case, perturb

CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]
MERGEABLE = [pytest.param(c, id=c.id) for c in CASES if c.mergeable]
NOT_MERGEABLE = [pytest.param(c, id=c.id) for c in CASES if not c.mergeable]
IDENTITY = [pytest.param(c, id=c.id) for c in CASES if c.identity]

cases = pytest.mark.parametrize("case", CASE_PARAMS)
backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, key: str) -> None:
    torch.testing.assert_close(actual, expected, atol=TOL[key], rtol=0.0)


def test_every_registered_method_has_a_case() -> None:
    with_case, registered = {c.method for c in CASES}, set(ri.list_methods(backbone="vit"))
    assert not registered - with_case, f"add a line to CASES in common.py for {sorted(registered - with_case)}"
    assert not with_case - registered, f"CASES names methods that are not registered: {sorted(with_case - registered)}"


@cases
def test_registry_flags_match_case(case: Case) -> None:
    assert ri.get_spec(case.method).mergeable == case.mergeable


@cases
@backbones
def test_only_adapter_parameters_are_trainable(case: Case, backbone: str) -> None:
    model = applied(case, backbone, perturbed=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(ri.adapter_parameter_names(model))
    heads = {n for n, _ in model.named_parameters() if n.startswith(("head.", "head_dist."))}
    assert heads <= trainable
    added = {n for n in trainable if "peft_" in n}
    # every trainable tensor is added by the method, a head tensor, or a backbone tensor the method selects
    record = model.peft_atlas_method
    assert trainable == added | heads | set(record["backbone_trainable"])
    assert ri.trainable_parameters(model) == sum(p.numel() for p in model.parameters() if p.requires_grad)


@cases
@backbones
def test_optimizer_step_leaves_frozen_tensors_bit_identical(case: Case, backbone: str) -> None:
    model = applied(case, backbone).train()
    adapter = set(ri.adapter_parameter_names(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # all parameters are handed to the optimizer: frozen ones must stay untouched (even by weight decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    images, labels = batch()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        if key not in adapter:
            assert torch.equal(after[key], before[key]), f"frozen tensor {key} changed"
    assert any(not torch.equal(after[k], before[k]) for k in adapter), "no adapter tensor was updated"


@cases
@backbones
def test_identity_at_init(case: Case, backbone: str) -> None:
    images, _ = batch()
    plain = build(backbone)
    model = applied(case, backbone, perturbed=False)
    with torch.no_grad():
        expected, actual = plain(images), model(images)
    if case.identity:
        assert_close(actual, expected, "identity")
    else:
        assert not torch.allclose(actual, expected), "method promised no identity yet changes nothing"


@cases
@backbones
def test_method_parameters_change_the_output(case: Case, backbone: str) -> None:
    """Guards against a method that is created but not wired into the forward pass: starting
    from a non-identity initialization, a random change of any one adapter tensor changes the output."""
    images, _ = batch()
    model = applied(case, backbone)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(3)
    unused = []
    with torch.no_grad():
        reference = model(images)
        for name in ri.adapter_parameter_names(model):
            saved = params[name].clone()
            params[name].add_(torch.randn(saved.shape, generator=generator))
            if torch.allclose(model(images), reference):
                unused.append(name)
            params[name].copy_(saved)
    assert not unused, f"these adapter tensors do not influence the output: {unused}"


@pytest.mark.parametrize("case", MERGEABLE)
@backbones
def test_merge_equals_unmerged(case: Case, backbone: str) -> None:
    images, _ = batch()
    model = applied(case, backbone)
    with torch.no_grad():
        unmerged = model(images)
        ri.merge(model)
        merged = model(images)
    assert_close(merged, unmerged, "merge")


@pytest.mark.parametrize("case", MERGEABLE)
@backbones
def test_merge_idempotent_and_unmerge_restores(case: Case, backbone: str) -> None:
    model = applied(case, backbone)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ri.merge(model)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    ri.merge(model)
    twice = model.state_dict()
    for key in once:
        assert torch.equal(twice[key], once[key]), f"second merge changed {key}"
    ri.unmerge(model)
    restored = {k: v.clone() for k, v in model.state_dict().items()}
    ri.unmerge(model)
    for key, value in original.items():
        assert_close(restored[key], value, "unmerge")
        assert torch.equal(model.state_dict()[key], restored[key]), f"second unmerge changed {key}"
    assert not ri.is_merged(model)


@pytest.mark.parametrize("case", MERGEABLE)
@backbones
def test_merge_unload_leaves_plain_architecture(case: Case, backbone: str) -> None:
    images, _ = batch()
    model = applied(case, backbone)
    with torch.no_grad():
        adapted = model(images)
        ri.merge(model, unload=True)
        unloaded = model(images)
    assert list(model.state_dict()) == list(build(backbone).state_dict())
    assert not any("peft_" in name for name, _ in model.named_modules())
    assert_close(unloaded, adapted, "merge")


@pytest.mark.parametrize("case", MERGEABLE)
def test_train_and_eval_do_not_merge_or_unmerge(case: Case) -> None:
    model = applied(case)
    model.train()
    model.eval()
    assert not ri.is_merged(model)
    ri.merge(model)
    model.train()
    model.eval()
    assert ri.is_merged(model) or not any(isinstance(m, Wrapper) for m in model.modules())


@pytest.mark.parametrize("case", NOT_MERGEABLE)
def test_merge_refused_for_non_mergeable(case: Case) -> None:
    model = applied(case)
    with pytest.raises(ValueError, match=f"{re.escape(case.method)}.*not mergeable"):
        ri.merge(model)


@cases
@backbones
def test_save_load_roundtrip(case: Case, backbone: str, tmp_path) -> None:
    images, _ = batch()
    model = applied(case, backbone)
    path = tmp_path / "task.safetensors"
    ri.save_adapter(model, path)
    fresh = build(backbone)  # same backbone weights, method not applied yet
    ri.load_adapter(fresh, path)
    assert fresh.peft_atlas_method == model.peft_atlas_method
    with torch.no_grad():
        assert_close(fresh(images), model(images), "save_load")
    # also into a model to which the same method is already applied (and re-initialized)
    again = build(backbone)
    ri.apply(again, case.method, **case.kwargs)
    ri.load_adapter(again, path)
    with torch.no_grad():
        assert_close(again(images), model(images), "save_load")


@pytest.mark.parametrize("case", MERGEABLE)
def test_load_into_merged_model(case: Case, tmp_path) -> None:
    images, _ = batch()
    model = applied(case)
    path = tmp_path / "task.safetensors"
    ri.save_adapter(model, path)
    target = applied(case, perturbed=False)
    ri.merge(target)
    ri.load_adapter(target, path)
    with torch.no_grad():
        assert_close(target(images), model(images), "merge")


@cases
def test_load_refuses_other_method(case: Case, tmp_path) -> None:
    path = tmp_path / "task.safetensors"
    ri.save_adapter(applied(case), path)
    other = applied(other_case(case), perturbed=False)
    with pytest.raises(ValueError, match=f"method {case.method!r}.*method {other_case(case).method!r}"):
        ri.load_adapter(other, path)


@cases
def test_load_refuses_other_backbone(case: Case, tmp_path) -> None:
    path = tmp_path / "task.safetensors"
    ri.save_adapter(applied(case, "cls-token"), path)
    with pytest.raises(ValueError, match="another backbone.*num_prefix_tokens: file 1 vs model 0"):
        ri.load_adapter(build("avg-pool"), path)
    wider = build("cls-token", embed_dim=48)
    with pytest.raises(ValueError, match="another backbone.*embed_dim: file 32 vs model 48"):
        ri.load_adapter(wider, path)


@cases
@backbones
def test_few_steps_lower_the_loss(case: Case, backbone: str) -> None:
    model = applied(case, backbone, perturbed=False).train()
    images, labels = batch(n=8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.gpu
@cases
def test_cuda_parameters_follow_the_wrapped_layer(case: Case) -> None:
    model = build().cuda()
    ri.apply(model, case.method, **case.kwargs)
    assert all(p.is_cuda for p in model.parameters())
    perturb(model)
    images, _ = batch()
    with torch.no_grad():
        assert model(images.cuda()).is_cuda
