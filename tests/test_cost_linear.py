"""LinearCostModel on hand-computed batches, and the ``cost_model:`` spec.

Coefficients used throughout (seconds):
    base 0.01, per prefill token 1e-4, per decode seq 2e-4,
    per context token 1e-6, per swap token 1e-5
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from sim.batch import Batch
from sim.cost import (
    AutoCostSpec,
    CostModelSpec,
    LinearCostModel,
    LinearCostSpec,
    ProfiledCostSpec,
    RooflineCostSpec,
    parse_cost_model_spec,
)
from sim.cost.base import CostModel, decode_run_times_by_steps


def linear() -> LinearCostModel:
    return LinearCostModel(base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=2e-4,
                           per_context_token_s=1e-6, per_swap_token_s=1e-5)


def decode(*context: int, **kw) -> Batch:
    return Batch(decode_context_tokens=context, **kw)


def prefill(new: tuple[int, ...], context: tuple[int, ...], **kw) -> Batch:
    return Batch(prefill_new_tokens=new, prefill_context_tokens=context, **kw)


def test_implements_the_cost_model_protocol():
    assert isinstance(linear(), CostModel)
    assert linear().name == "linear"


def test_pure_decode():
    # 0.01 + 2 seqs * 2e-4 + (100 + 300) keys * 1e-6 = 0.0108
    assert linear().step_time(decode(100, 300)) == pytest.approx(0.0108, rel=1e-12)


def test_pure_prefill_counts_cached_context_as_keys():
    # 0.01 + (50 + 30) new * 1e-4 + ((0 + 50) + (20 + 30)) keys * 1e-6 = 0.0181
    assert linear().step_time(prefill((50, 30), (0, 20))) == pytest.approx(0.0181, rel=1e-12)


def test_mixed_prefill_and_decode():
    # 0.01 + 50 * 1e-4 + 1 * 2e-4 + (100 + 50) * 1e-6 = 0.01535
    batch = Batch(prefill_new_tokens=(50,), prefill_context_tokens=(0,), decode_context_tokens=(100,))
    assert linear().step_time(batch) == pytest.approx(0.01535, rel=1e-12)


def test_layout_does_not_change_the_cost():
    assert linear().step_time(decode(100, 300, kv_layout="paged")) == \
        linear().step_time(decode(100, 300, kv_layout="contiguous"))


def test_static_padding_costs_its_extra_tokens():
    # prompts (20, 50) padded to (50, 50): 30 more new tokens and keys, 30 * (1e-4 + 1e-6)
    padded = linear().step_time(prefill((50, 50), (0, 0)))
    unpadded = linear().step_time(prefill((20, 50), (0, 0)))
    assert padded - unpadded == pytest.approx(0.00303, rel=1e-9)
    # decode contexts (5, 20) padded to (20, 20): 15 more keys
    assert linear().step_time(decode(20, 20)) - linear().step_time(decode(5, 20)) == \
        pytest.approx(15e-6, rel=1e-9)


def test_skew_is_invisible_to_a_linear_model():
    # Only sums enter: 4000 keys (decode) or 4000 new tokens (prefill) either way.
    cost = linear()
    assert cost.step_time(decode(100, 3900)) == pytest.approx(cost.step_time(decode(2000, 2000)), rel=1e-12)
    assert cost.step_time(prefill((100, 3900), (0, 0))) == \
        pytest.approx(cost.step_time(prefill((2000, 2000), (0, 0))), rel=1e-12)


def test_swap_tokens_are_priced():
    # 0.01 + 2e-4 + 100 * 1e-6 + (10 + 5) * 1e-5 = 0.01045
    assert linear().step_time(decode(100, swap_in_tokens=10, swap_out_tokens=5)) == \
        pytest.approx(0.01045, rel=1e-12)
    # swap costs nothing by default
    free_swap = LinearCostModel(0.01, 1e-4, 2e-4, 1e-6)
    assert free_swap.step_time(decode(100, swap_in_tokens=10)) == pytest.approx(0.0103, rel=1e-12)


def test_empty_batch_costs_nothing():
    assert linear().step_time(Batch()) == 0.0
    assert linear().decode_run_times(Batch(), 2).tolist() == [0.0, 0.0]


def test_decode_run_adds_one_key_per_sequence_per_step():
    # 0.0108, then +2 keys * 1e-6 each step
    np.testing.assert_allclose(linear().decode_run_times(decode(100, 300), 3),
                               [0.0108, 0.010802, 0.010804], rtol=1e-12)


@pytest.mark.parametrize("batch", [
    decode(7),
    decode(1, 4000, 13, 250, kv_layout="contiguous"),
    decode(9, 9, swap_in_tokens=3, swap_out_tokens=1),
    Batch(prefill_new_tokens=(5, 60), prefill_context_tokens=(0, 100), decode_context_tokens=(2, 77)),
    prefill((12,), (0,)),
])
@pytest.mark.parametrize("num_steps", [0, 1, 37])
def test_decode_run_times_match_per_step(batch, num_steps):
    cost = linear()
    fast = cost.decode_run_times(batch, num_steps)
    assert fast.shape == (num_steps,)
    np.testing.assert_allclose(fast, decode_run_times_by_steps(cost, batch, num_steps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("field_name", ["base_s", "per_prefill_token_s", "per_decode_seq_s",
                                        "per_context_token_s", "per_swap_token_s"])
@pytest.mark.parametrize("bad", [-1e-6, float("nan")])
def test_negative_or_nan_coefficient_is_rejected(field_name, bad):
    values = dict(base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=2e-4,
                  per_context_token_s=0.0, per_swap_token_s=0.0)
    values[field_name] = bad
    with pytest.raises(ValueError, match=f"{field_name} must be >= 0"):
        LinearCostModel(**values)


def test_negative_num_steps_is_rejected():
    with pytest.raises(ValueError, match="num_steps"):
        linear().decode_run_times(decode(3), -2)


# --- the cost_model spec ----------------------------------------------------

LINEAR_YAML = {"kind": "linear", "base_s": 0.01, "per_prefill_token_s": 0.0001,
               "per_decode_seq_s": 0.0002, "per_context_token_s": 0.0}


def test_spec_defaults_to_auto():
    assert parse_cost_model_spec(None) == AutoCostSpec(paged_attention_overhead=None, step_overhead_s=None,
                                                       profile_dir=None)
    assert RooflineCostSpec().paged_attention_overhead == 1.1
    assert parse_cost_model_spec({"step_overhead_s": 0.001}) == AutoCostSpec(step_overhead_s=0.001)


def test_spec_picks_the_model_by_kind():
    assert parse_cost_model_spec("roofline") == RooflineCostSpec()
    assert parse_cost_model_spec({"kind": "profiled", "profile_dir": "p/q"}) == \
        ProfiledCostSpec(profile_dir=Path("p/q"))
    assert parse_cost_model_spec(LINEAR_YAML) == LinearCostSpec(
        base_s=0.01, per_prefill_token_s=1e-4, per_decode_seq_s=2e-4, per_context_token_s=0.0,
        per_swap_token_s=0.0)


def test_spec_works_as_a_config_field():
    class Config(BaseModel):
        cost_model: CostModelSpec = AutoCostSpec()

    assert Config().cost_model.kind == "auto"
    assert Config(cost_model=LINEAR_YAML).cost_model.base_s == 0.01
    assert Config(cost_model=LINEAR_YAML).model_dump(mode="json")["cost_model"]["kind"] == "linear"


def test_unknown_kind_lists_the_allowed_kinds():
    with pytest.raises(ValidationError, match="allowed: auto, roofline, linear, profiled") as info:
        parse_cost_model_spec({"kind": "magic"})
    assert "'magic'" in str(info.value)


def test_unknown_key_is_rejected_naming_it():
    with pytest.raises(ValidationError, match=r"roofline\.base_s\n  Extra inputs are not permitted"):
        parse_cost_model_spec({"kind": "roofline", "base_s": 0.01})
    with pytest.raises(ValidationError, match=r"auto\.step_overhead\n  Extra inputs"):
        parse_cost_model_spec({"step_overhead": 0.01})


def test_linear_needs_every_coefficient_and_none_negative():
    missing = {k: v for k, v in LINEAR_YAML.items() if k != "per_decode_seq_s"}
    with pytest.raises(ValidationError, match=r"linear\.per_decode_seq_s\n  Field required"):
        parse_cost_model_spec(missing)
    with pytest.raises(ValidationError, match=r"linear\.base_s\n  Input should be greater than or equal to 0"):
        parse_cost_model_spec({**LINEAR_YAML, "base_s": -0.01})
    with pytest.raises(ValidationError, match=r"linear\.per_context_token_s\n  Input should be a finite number"):
        parse_cost_model_spec({**LINEAR_YAML, "per_context_token_s": float("inf")})


def test_roofline_knobs_are_bounded():
    with pytest.raises(ValidationError, match=r"paged_attention_overhead\n  Input should be greater than or equal to 0.5"):
        parse_cost_model_spec({"kind": "roofline", "paged_attention_overhead": 0.1})
    with pytest.raises(ValidationError, match=r"auto\.paged_attention_overhead\n  Input should be less than or equal to 5"):
        parse_cost_model_spec({"paged_attention_overhead": 11})
    with pytest.raises(ValidationError, match=r"step_overhead_s\n  Input should be greater than or equal to 0"):
        parse_cost_model_spec({"kind": "auto", "step_overhead_s": -0.001})
