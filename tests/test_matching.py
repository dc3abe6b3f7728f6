"""The algorithm core against the official implementation's recorded matcher
calls (SPEC §9) and against hand-worked examples (SPEC §1-§2)."""

from __future__ import annotations

import pytest
import torch

from crossget_cli.core import (
    MergePlan,
    clamp_r,
    complete_graph_matching,
    ensemble_merge,
    protected_indices,
    token_schedule,
)


def _golden_calls(golden):
    for name, variant in golden["variants"].items():
        for call, decisions in zip(variant["eval_match"], variant["eval_decisions"]):
            yield name, call, decisions


def _match(call) -> MergePlan:
    metric = call["in_metric"]
    n, t, _ = metric.shape
    eot = call["in_eot"]
    protected = protected_indices(n, t, None if eot is None else eot.view(-1), metric.device)
    return complete_graph_matching(metric, call["in_query_token"][:, 0], clamp_r(call["in_r"], t, protected.shape[1]), protected)


def test_decisions_match_official_bit_for_bit(golden):
    calls = list(_golden_calls(golden))
    assert len(calls) == 24
    for name, call, decisions in calls:
        plan = _match(call)
        ours = [sorted(zip(s.tolist(), d.tolist())) for s, d in zip(plan.src_idx, plan.dst_idx)]
        assert ours == [sorted(map(tuple, pairs)) for pairs in decisions], name


def test_weights_match_official(golden):
    for name, call, _ in _golden_calls(golden):
        plan = _match(call)
        # Order sources by index: tied scores may list equal sources differently.
        ours = plan.weight.gather(1, plan.src_idx.argsort(1)[..., None].expand(-1, -1, 2))
        src = call["src_idx"][..., 0]
        theirs = call["weight"].gather(1, src.argsort(1)[..., None].expand(-1, -1, 2))
        assert torch.equal(plan.src_idx.sort(1).values, src.sort(1).values), name
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), name


def test_clamp_and_token_schedule_follow_spec_section_5():
    # ViT-B/16: 196 patches + CLS + cross slot; text: 77 + cross slot.
    assert token_schedule(198, [16] * 12, 2) == [198, 182, 166, 150, 134, 118, 102, 86, 70, 54, 38, 22, 12]
    assert token_schedule(78, [6] * 12, 3) == [78, 72, 66, 60, 54, 48, 42, 36, 30, 24, 18, 12, 8]
    assert clamp_r(16, 22, 2) == 10
    assert clamp_r(5, 4, 3) == 0


def _plan(src, dst, keep, weight) -> MergePlan:
    plan = MergePlan.from_pairs(torch.tensor([src]), torch.tensor([dst]), len(src) + len(keep), torch.tensor([weight]))
    assert plan.keep_idx.tolist() == [keep] and plan.dst_idx.tolist() == [dst]
    assert plan.dst_slot.tolist() == [[keep.index(d) for d in dst]]
    assert torch.allclose(plan.weight, torch.tensor([weight]))
    return plan


def test_merge_rule_is_literal_and_not_convex_for_unequal_sizes():
    # Sizes (1, 3), weights (.8, .2): 2*.8*1*x_s + 3x_k + (2*.2 - 1)*3x_k over size 4
    # = 0.4 x_s + 0.3 x_k (SPEC §2).
    x = torch.tensor([[[1.0, 0.0], [0.0, 10.0], [5.0, 5.0]]])
    sizes = torch.tensor([[[1.0], [1.0], [3.0]]])
    plan = _plan(src=[1], dst=[2], keep=[0, 2], weight=[[0.8, 0.2]])
    merged, new_sizes, _ = ensemble_merge(x, sizes, plan)
    expected = 0.8 * 2 * 1 * x[0, 1] + 3 * x[0, 2] + (2 * 0.2 - 1) * 3 * x[0, 2]
    assert torch.allclose(merged[0, 1], expected / 4)
    assert torch.allclose(merged[0, 1], 0.4 * x[0, 1] + 0.3 * x[0, 2])
    assert torch.equal(merged[0, 0], x[0, 0])
    assert new_sizes[0, :, 0].tolist() == [1.0, 4.0]


def test_two_sources_into_one_destination_use_the_pre_merge_destination():
    x = torch.tensor([[[1.0], [2.0], [4.0], [8.0]]])
    sizes = torch.ones(1, 4, 1)
    plan = _plan(src=[1, 2], dst=[3, 3], keep=[0, 3], weight=[[0.5, 0.5], [0.25, 0.75]])
    merged, new_sizes, ids = ensemble_merge(x, sizes, plan, token_ids=torch.tensor([[0.0, 3.0, 6.0, 9.0]]))
    x_k = 8.0
    total = x_k + (2 * 0.5 * 2.0 + (2 * 0.5 - 1) * x_k) + (2 * 0.25 * 4.0 + (2 * 0.75 - 1) * x_k)
    assert merged[0, 1, 0].item() == pytest.approx(total / 3)
    assert new_sizes[0, 1, 0].item() == 3.0
    assert ids[0].tolist() == pytest.approx([0.0, (3.0 + 6.0 + 9.0) / 3])  # plain size-weighted mean


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_merge_stays_in_the_model_dtype_within_rounding(dtype):
    """bf16/fp16 hidden states, several sources into one destination, weights the
    dtype cannot hold: the merge runs in the model dtype (one product that
    accumulates in float32), so the merged tokens are the exact rule within a
    few roundings of the dtype; sizes stay exact float32; and the result does not
    depend on the rest of the batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 16, generator=gen).to(dtype)
    sizes = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 2.0]).repeat(2, 1)[..., None]
    weight = [[0.7, 0.3], [0.61, 0.39], [0.55, 0.45]]
    one = _plan(src=[1, 2, 3], dst=[4, 4, 5], keep=[0, 4, 5], weight=weight)
    plan = MergePlan(*(t.expand(2, *t.shape[1:]) for t in (one.src_idx, one.slot, one.dst, one.source_weight)))
    merged, new_sizes, _ = ensemble_merge(x, sizes, plan)
    X = x.double() * sizes.double()  # [N, T, C] size-weighted, exact
    expected = X[:, [0, 4, 5]].clone()
    for (s, d), (w_s, w_d) in zip([(1, 4), (2, 4), (3, 5)], weight):
        expected[:, [0, 4, 5].index(d)] += 2 * w_s * X[:, s] + (2 * w_d - 1) * X[:, d]
    expected /= new_sizes.double()
    assert new_sizes.dtype == torch.float32 and new_sizes[0, :, 0].tolist() == [1.0, 4.0, 5.0]
    assert merged.dtype == dtype
    ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(1.0)
    assert ((merged.double() - expected).abs() <= 4 * ulp).all()
    alone, _, _ = ensemble_merge(x[1:], sizes[1:], MergePlan(one.src_idx, one.slot, one.dst, one.source_weight))
    assert torch.equal(alone[0], merged[1])


def test_plan_slots_and_weights_for_every_token():
    # Tokens 1 -> 4 and 2 -> 4, 3 -> 5 merged away; the others keep their order.
    plan = _plan(src=[1, 2, 3], dst=[4, 4, 5], keep=[0, 4, 5], weight=[[0.7, 0.3], [0.6, 0.4], [0.5, 0.5]])
    assert plan.slot.tolist() == [[0, 1, 1, 2, 1, 2]]
    assert plan.dst.tolist() == [[0, 4, 4, 5, 4, 5]]
    assert torch.allclose(plan.source_weight, torch.tensor([[1.0, 1.4, 1.2, 1.0, 1.0, 1.0]]))


def test_hand_worked_matching():
    # Tokens 0 (CLS) and 4 (cross) are protected. Tokens 1 and 2 are near
    # duplicates; 3 is orthogonal to both. The guide points along token 2, so
    # token 1 (less important) is the one merged, into 2.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0.1], [0, 1.0, 0.0], [0, 0, 1.0], [1.0, 1.0, 1.0]]])
    guide = torch.tensor([[0.0, 1.0, -0.5]])
    protected = protected_indices(1, 5, None, metric.device)
    plan = complete_graph_matching(metric, guide, 1, protected)
    assert plan.src_idx.tolist() == [[1]]
    assert plan.dst_idx.tolist() == [[2]]
    assert plan.keep_idx.tolist() == [[0, 2, 3, 4]]
    unit = torch.nn.functional.normalize
    a = unit(metric[0], dim=-1) @ unit(guide[0], dim=-1)
    assert torch.allclose(plan.weight[0, 0], torch.softmax(torch.stack([a[1], a[2]]), 0))


def test_matching_is_per_sample():
    gen = torch.Generator().manual_seed(3)
    metric = torch.randn(5, 20, 16, generator=gen)
    guide = torch.randn(5, 16, generator=gen)
    protected = protected_indices(5, 20, None, metric.device)
    whole = complete_graph_matching(metric, guide, 6, protected)
    for i in range(5):
        alone = complete_graph_matching(metric[i : i + 1], guide[i : i + 1], 6, protected[i : i + 1])
        assert torch.equal(alone.src_idx[0], whole.src_idx[i])
        assert torch.equal(alone.dst_idx[0], whole.dst_idx[i])


def test_matching_runs_in_float32_for_half_inputs():
    gen = torch.Generator().manual_seed(4)
    metric = torch.randn(2, 12, 8, generator=gen)
    guide = torch.randn(2, 8, generator=gen)
    protected = protected_indices(2, 12, torch.tensor([5, 7]), metric.device)
    plan = complete_graph_matching(metric.half(), guide.half(), 3, protected)
    assert plan.weight.dtype == torch.float32
    reference = complete_graph_matching(metric.half().float(), guide.half().float(), 3, protected)
    assert torch.equal(plan.src_idx, reference.src_idx)


def test_protected_tokens_are_never_sources_or_destinations():
    gen = torch.Generator().manual_seed(5)
    metric = torch.randn(4, 11, 8, generator=gen)
    eot = torch.tensor([3, 5, 9, 2])
    protected = protected_indices(4, 11, eot, metric.device)
    plan = complete_graph_matching(metric, torch.randn(4, 8, generator=gen), clamp_r(10, 11, 3), protected)
    for i in range(4):
        touched = set(plan.src_idx[i].tolist()) | set(plan.dst_idx[i].tolist())
        assert not touched & {0, 10, int(eot[i])}


@pytest.mark.parametrize("method", ["crossget", "tome"])
def test_padding_never_changes_a_samples_real_decisions(method):
    """A sample padded from ``real`` to ``T`` tokens (CrossGET: padding before
    the last, cross, slot, as text is laid out) merges exactly the real tokens
    it merges alone, into the same destinations; its padding goes nowhere real."""
    from crossget_cli.core.matching import bipartite_matching

    gen = torch.Generator().manual_seed(6)
    real, t, r = 11, 24, 5
    metric = torch.randn(3, t, 8, generator=gen)
    guide = torch.randn(3, 8, generator=gen)
    slot = int(method == "crossget")  # the cross slot
    eot = torch.tensor([[real - 1 - slot]] * 3)
    pads = torch.zeros(3, t, dtype=torch.bool)
    pads[:, real - slot : t - slot] = True
    alone_metric = torch.cat([metric[:, : real - slot], metric[:, t - slot :]], dim=1)  # the same real tokens
    no_pads = torch.zeros(3, real, dtype=torch.bool)
    if method == "crossget":
        r_batch, r_alone = clamp_r(r, t, 3), clamp_r(r, real, 3)
        padded = complete_graph_matching(metric, guide, r_batch, eot, padding=pads)
        alone = complete_graph_matching(alone_metric, guide, r_alone, eot, padding=no_pads)
    else:
        r_batch, r_alone = clamp_r(r, t, 2, bipartite=True), clamp_r(r, real, 2, bipartite=True)
        padded = bipartite_matching(metric, r_batch, eot, padding=pads)
        alone = bipartite_matching(alone_metric, r_alone, eot, padding=no_pads)
    assert r_alone < r_batch  # the padding makes up the difference
    position = torch.arange(t)
    original = torch.where(position < real - slot, position, position - (t - real))  # padded -> alone index
    for i in range(3):
        src, dst = padded.src_idx[i], padded.dst_idx[i]
        is_real = ~pads[i, src]
        assert int(is_real.sum()) == r_alone
        assert not pads[i, dst[is_real]].any()
        pairs = set(zip(original[src[is_real]].tolist(), original[dst[is_real]].tolist()))
        assert pairs == set(zip(alone.src_idx[i].tolist(), alone.dst_idx[i].tolist()))
        if method == "crossget":  # a padding source contributes its (zero) value only
            assert torch.all(padded.source_weight[i, src[~is_real]] == 1)


def _random_plans(n: int, t: int, r: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    metric, guide = torch.randn(n, t, 32, generator=gen), torch.randn(n, 32, generator=gen)
    return complete_graph_matching(metric, guide, r), gen


@pytest.mark.parametrize("with_sizes", [False, True])
def test_cpu_merge_equals_the_membership_product(monkeypatch, with_sizes):
    """The CPU's ``index_add_`` merge and the one-hot product the GPU runs (a
    second implementation of the same sums) agree on values, sizes, ids and
    gradients; ``index_add_`` is bit-identical from run to run even when many
    sources share a destination."""
    from crossget_cli.core import merge

    plan, gen = _random_plans(4, 40, 19, seed=3)
    x = torch.randn(4, 40, 24, generator=gen, requires_grad=True)
    sizes = torch.randint(1, 5, (4, 40, 1), generator=gen).float() if with_sizes else None
    ids = torch.randint(0, 100, (4, 40), generator=gen).float()
    probe = torch.randn(4, 21, 24, generator=gen)

    def run():
        merged, new_sizes, new_ids = ensemble_merge(x, sizes, plan, ids)
        (grad,) = torch.autograd.grad((merged * probe).sum(), x)
        return merged.detach(), new_sizes, new_ids, grad

    assert not merge.sums_by_product(x)
    by_index, again = run(), run()
    monkeypatch.setattr(merge, "sums_by_product", lambda values: True)
    by_product = run()
    for ours, twice, theirs in zip(by_index, again, by_product):
        assert torch.equal(ours, twice)
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-6)
    assert by_index[1].sum().item() == (4 * 40 if sizes is None else sizes.sum().item())


def test_matching_leaves_the_callers_keys_alone():
    """The keys are normalised in place only in the matcher's own copy."""
    gen = torch.Generator().manual_seed(5)
    metric, guide = torch.randn(2, 12, 8, generator=gen), torch.randn(2, 8, generator=gen)
    before = metric.clone()
    guided = complete_graph_matching(metric, guide, 4)
    by_importance = complete_graph_matching(metric, None, 4, importance=torch.randn(2, 12, generator=gen))
    assert torch.equal(metric, before)
    assert guided.r == by_importance.r == 4
