import copy

import pytest
import torch

from iteralite.architectures.selective_scan.config import Config as SelectiveScanConfig
from iteralite.architectures.selective_scan.model import Model as SelectiveScan
from iteralite.layers import count_parameters
from iteralite.pruning import criteria, groups, planner, surgery
from iteralite.pruning.model_groups import build_groups


def drop_some(model, kinds, seed=0):
    """Keep a random subset of channels in the groups of the given kinds, everything in the others."""
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for g in build_groups(model.cfg):
        if g.kind in kinds:
            n_keep = max(1, g.size // 2 + (1 if g.kind == "experts" else 0) - 1)
            kept[g.name] = torch.randperm(g.size, generator=gen)[:n_keep].sort().values
        else:
            kept[g.name] = torch.arange(g.size)
    return kept


@pytest.mark.parametrize("kinds", [("width",), ("ssm_channels",), ("expert_hidden",), ("experts",), ("ssm_blocks",),
                                   ("moe_blocks",), groups.KINDS])
def test_pruned_model_equals_masked_dense_model(tiny_model, kinds):
    kept = drop_some(tiny_model, kinds)
    pruned = surgery.prune(tiny_model, kept).eval()
    masked = surgery.masked_model(tiny_model, kept).eval()
    idx = torch.randint(0, tiny_model.cfg.vocab_size, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = masked(idx)
        got, _ = pruned(idx)
    assert count_parameters(pruned) < count_parameters(tiny_model)
    assert (got - expected).abs().max().item() <= 1e-5


def test_tensors_physically_shrink_and_state_dimension_is_untouched(tiny_model):
    kept = drop_some(tiny_model, ("width", "ssm_channels", "expert_hidden", "experts"))
    pruned = surgery.prune(tiny_model, kept)
    width, di = len(kept["width"]), len(kept["layer0.ssm_channels"])
    ssm = pruned.layers[0]["ssm"]
    assert tuple(pruned.tok_emb.weight.shape) == (300, width)  # vocabulary untouched
    assert tuple(ssm.in_proj.weight.shape) == (2 * di, width)
    assert tuple(ssm.B.shape) == (4, di) and tuple(ssm.C.shape) == (di, 4) and tuple(ssm.A_log.shape) == (4,)
    torch.testing.assert_close(ssm.A_log, tiny_model.layers[0]["ssm"].A_log)
    assert len(pruned.layers[0]["moe"].experts) == len(kept["layer0.experts"])


def test_top_k_is_clamped_to_experts_left(tiny_model):
    kept = {g.name: torch.arange(g.size) for g in build_groups(tiny_model.cfg)}
    kept["layer1.experts"] = torch.tensor([2])
    pruned = surgery.prune(tiny_model, kept)
    assert pruned.cfg.top_k_in(1) == 1 and pruned.layers[1]["moe"].top_k == 1
    assert pruned.layers[0]["moe"].top_k == 2
    pruned(torch.zeros(1, 4, dtype=torch.long))  # runs with one expert


@pytest.mark.parametrize("blocks", [0.0, 0.5])
def test_parameter_count_equals_plan_arithmetic(tiny_model, blocks):
    ratios = {"width": 0.25, "ssm_channels": 0.5, "expert_hidden": 0.5, "experts": 0.25, "ssm_blocks": blocks,
              "moe_blocks": blocks}
    counts = planner.plan_counts(tiny_model.cfg, ratios, {"width": 8, "ssm_channels": 8})
    assert counts["width"] == 24 and counts["layer0.ssm_channels"] == 24 and counts["layer0.experts"] == 3
    assert counts["ssm_blocks"] == counts["moe_blocks"] == (1 if blocks else 2)
    scores = {name: torch.rand(n) for name, n in
              ((g.name, g.size) for g in build_groups(tiny_model.cfg))}
    pruned = surgery.prune(tiny_model, surgery.choose_kept(scores, counts))
    from iteralite.architectures.selective_scan.config import parameter_count

    assert count_parameters(pruned) == parameter_count(planner.pruned_config(tiny_model.cfg, counts))


def test_criteria_are_deterministic_and_differ_from_random(tiny_model):
    batches = [torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    stats = criteria.calibrate(copy.deepcopy(tiny_model), batches)
    random_scores = criteria.score_groups(tiny_model, "random", stats, seed=7)
    again = criteria.score_groups(tiny_model, "random", stats, 7)
    assert all(torch.equal(random_scores[k], v) for k, v in again.items())
    for criterion in ("l1", "l2", "taylor", "wanda"):
        a = criteria.score_groups(tiny_model, criterion, stats, seed=7)
        b = criteria.score_groups(tiny_model, criterion, stats, seed=8)
        assert all(torch.equal(a[k], b[k]) for k in a), criterion
        counts = planner.plan_counts(tiny_model.cfg, {"ssm_channels": 0.5}, {})
        chosen = surgery.choose_kept(a, counts)["layer0.ssm_channels"]
        assert not torch.equal(chosen, surgery.choose_kept(random_scores, counts)["layer0.ssm_channels"]), criterion


def test_l1_score_sums_every_coupled_slice(tiny_model):
    group = next(g for g in build_groups(tiny_model.cfg) if g.name == "layer0.expert1.hidden")
    scores = criteria.L1().score(group, tiny_model.state_dict(), criteria.CalibrationStats(), 0)
    e = tiny_model.layers[0]["moe"].experts[1]
    expected = e.w1.weight.abs().sum(1) + e.w1.bias.abs() + e.w2.weight.abs().sum(0)
    torch.testing.assert_close(scores, expected.detach())


def test_infeasible_target_names_bound_and_best_figure():
    cfg = SelectiveScanConfig()
    bounds = {"width": 0.0, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5}
    with pytest.raises(planner.PlanError) as err:
        planner.plan_target(cfg, 0.4, bounds, {})
    message = str(err.value)
    assert "pruning.targets" in message and "at most 39.8% can be removed" in message
    assert "pruning.bounds.width=0.0" in message


def test_global_target_is_met_within_bounds():
    cfg = SelectiveScanConfig()
    bounds = {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5}
    plan = planner.plan_target(cfg, 0.4, bounds, {"width": 32, "ssm_channels": 32, "expert_hidden": 16})
    assert 0.4 <= plan["removed_fraction"] < 0.45
    assert all(plan["ratios"][k] <= bounds[k] for k in bounds)


def test_pressure_cuts_a_kind_deeper_at_the_same_target():
    cfg = SelectiveScanConfig()
    bounds = {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5}
    round_to = {"width": 32, "ssm_channels": 32, "expert_hidden": 16}
    even = planner.plan_target(cfg, 0.4, bounds, round_to)
    leaning = planner.plan_target(cfg, 0.4, bounds, round_to, {"ssm_channels": 1.5})
    assert (even["ratios"]["ssm_channels"], leaning["ratios"]["ssm_channels"]) == (0.375, 0.5)
    assert 0.4 <= leaning["removed_fraction"] < 0.45
    assert leaning["ratios"]["expert_hidden"] < even["ratios"]["expert_hidden"]


def test_the_plan_preset_keeps_the_width_and_removes_under_a_fifth():
    plan = planner.plan_target(SelectiveScanConfig(), "plan", {}, {"ssm_channels": 32, "expert_hidden": 16})
    assert plan["ratios"]["width"] == 0 and 0.15 < plan["removed_fraction"] < 0.2


def test_pruned_checkpoint_loads_in_fresh_process(tiny_model, tmp_path):
    import subprocess
    import sys

    from iteralite.checkpoint import save_checkpoint

    kept = drop_some(tiny_model, ("width", "ssm_channels", "ssm_blocks", "moe_blocks"))
    pruned = surgery.prune(tiny_model, kept)
    assert 0 in pruned.cfg.layer_d_inner and [] in pruned.cfg.layer_expert_hidden  # a block of each kind is gone
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, pruned, "sha")
    code = (
        "import sys, torch\n"
        "from iteralite.checkpoint import load_checkpoint\n"
        f"m, meta = load_checkpoint({str(path)!r})\n"
        "print(m.cfg.d_model, sum(p.numel() for p in m.parameters()), 'iteralite.pruning' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(pruned.cfg.d_model), str(count_parameters(pruned)), "False"]  # no pruning code needed


def test_pruned_model_trains(tiny_model):
    """Optimizer steps on the physically smaller model lower its loss: every kept tensor is a parameter that gets a
    gradient, and the steps on them move the loss."""
    kept = drop_some(tiny_model, ("width", "ssm_channels", "expert_hidden", "experts"))
    pruned = surgery.prune(tiny_model, kept).train()
    assert isinstance(pruned, SelectiveScan) and count_parameters(pruned) < count_parameters(tiny_model)
    batch = torch.randint(0, 300, (4, 17), generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.AdamW(pruned.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        logits, balance = pruned(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()) + 0.01 * balance
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in pruned.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses  # one batch, being learnt: the steps reach the kept weights


def test_skip_loss_scores_a_block_by_the_loss_its_removal_causes(tiny_model):
    from iteralite.losses import head_cross_entropy_sum

    batches = [torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    stats = criteria.calibrate(copy.deepcopy(tiny_model), batches)
    scores = criteria.score_groups(tiny_model, "l1", stats, seed=0)

    def loss(model):
        tokens = sum(b[:, 1:].numel() for b in batches)
        return sum(head_cross_entropy_sum(model.head, model.hidden_states(b[:, :-1])[0].flatten(0, 1),
                                          b[:, 1:].flatten()) for b in batches) / tokens

    without_moe1 = {g.name: torch.arange(g.size) for g in build_groups(tiny_model.cfg)}
    without_moe1["moe_blocks"] = torch.tensor([0])
    with torch.no_grad():
        expected = loss(surgery.prune(tiny_model, without_moe1)) - loss(tiny_model)
    assert scores["moe_blocks"][1].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert scores["ssm_blocks"].shape == (2,) and not torch.equal(scores["ssm_blocks"], scores["moe_blocks"])


def test_planner_removes_blocks_within_their_bound():
    cfg = SelectiveScanConfig()
    bounds = {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5, "ssm_blocks": 0.25,
              "moe_blocks": 0.25}
    plan = planner.plan_target(cfg, 0.4, bounds, {"width": 32, "ssm_channels": 32, "expert_hidden": 16})
    assert plan["ratios"]["ssm_blocks"] <= 0.25 and plan["ratios"]["moe_blocks"] <= 0.25
    assert plan["ratios"]["ssm_blocks"] + plan["ratios"]["moe_blocks"] > 0  # depth takes part in the allocation
    counts = planner.plan_counts(cfg, plan["ratios"], plan["round_to"])
    assert 0.4 <= 1 - planner.parameter_count(planner.pruned_config(cfg, counts)) / planner.parameter_count(cfg)


def test_pruning_in_steps_ends_where_one_shot_does_and_recovers_between_steps():
    from iteralite.pruning import schedule

    cfg = SelectiveScanConfig(vocab_size=300, d_model=64, n_layers=2, max_seq=32, d_inner=64, d_state=4, n_experts=4,
                          expert_hidden=32)
    torch.manual_seed(0)
    dense = SelectiveScan(cfg).eval()
    bounds = {"width": 0.5, "ssm_channels": 0.75, "expert_hidden": 0.75, "experts": 0.5, "moe_blocks": 0.5}
    round_to = {"width": 8, "ssm_channels": 8, "expert_hidden": 8}
    batches = [torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(s)) for s in range(2)]

    def l1(model):
        return criteria.score_groups(model, "l1", criteria.calibrate(copy.deepcopy(model), batches), 0, "same")

    recovered = []

    def recover(model, step):
        recovered.append((step, count_parameters(model)))
        return model

    in_steps = schedule.prune_in_steps(dense, 0.5, 3, bounds, round_to, {}, l1(dense), l1, recover)
    plan = planner.plan_target(cfg, 0.5, bounds, round_to)
    one_shot = surgery.prune(dense, surgery.choose_kept(l1(dense), planner.plan_counts(cfg, plan["ratios"], round_to)))
    assert in_steps.cfg.to_dict() == one_shot.cfg.to_dict()  # the same shapes at the end
    assert [step for step, _ in recovered] == [1, 2]
    sizes = [count_parameters(dense)] + [n for _, n in recovered] + [count_parameters(in_steps)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4  # smaller at every step
