"""The workload config section and ``generate``: combinations, determinism, errors."""
import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from workloads.spec import WorkloadSpec, generate, generate_with_trace
from workloads.trace_formats import TraceError

TRACE = """arrived_at,num_prefill_tokens,num_decode_tokens
0.0,100,10
2.0,200,20
4.0,300,30
8.0,400,40
"""


def spec_from_yaml(text):
    return WorkloadSpec.model_validate(yaml.safe_load(text)["workload"])


@pytest.fixture
def trace_path(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text(TRACE)
    return str(path)


def test_synthetic_yaml_example_generates_the_requested_count():
    spec = spec_from_yaml("""
workload:
  num_requests: 1000
  arrival: {process: poisson, rate_rps: 4.0}
  lengths: {preset: sharegpt}
""")
    workload = generate(spec, np.random.default_rng(0))
    assert len(workload) == 1000
    assert workload.name == "poisson+sharegpt"
    assert workload.arrival_s[0] == 0.0
    assert workload.prompt_tokens.max() <= 1024


def test_same_seed_gives_identical_workloads():
    spec = WorkloadSpec(num_requests=50, arrival={"process": "gamma", "rate_rps": 2.0, "cv": 3.0},
                        lengths={"prompt": {"dist": "lognormal", "mean": 200, "sigma": 1.0, "max_tokens": 2048},
                                 "output": {"dist": "uniform", "low": 1, "high": 64}})
    first, again = generate(spec, np.random.default_rng(5)), generate(spec, np.random.default_rng(5))
    other = generate(spec, np.random.default_rng(6))
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(first, column), getattr(again, column))
        assert not np.array_equal(getattr(first, column), getattr(other, column))


def test_trace_defaults_replay_arrivals_and_lengths(trace_path):
    spec = WorkloadSpec(trace={"path": trace_path}, num_requests=3)
    assert spec.arrival.process == "trace" and spec.lengths.from_trace
    workload, loaded = generate_with_trace(spec, np.random.default_rng(0))
    np.testing.assert_array_equal(workload.arrival_s, [0.0, 2.0, 4.0])
    np.testing.assert_array_equal(workload.prompt_tokens, [100, 200, 300])
    np.testing.assert_array_equal(workload.output_tokens, [10, 20, 30])
    assert loaded.num_over_limit == 1


def test_arrival_without_process_means_trace_replay_when_a_trace_is_given(trace_path):
    spec = WorkloadSpec(trace=trace_path, arrival={"time_scale": 0.25})
    assert spec.arrival.process == "trace"
    np.testing.assert_array_equal(generate(spec, np.random.default_rng(0)).arrival_s, [0.0, 0.5, 1.0, 2.0])


def test_num_requests_and_trace_limit_both_cap(trace_path):
    spec = WorkloadSpec(trace={"path": trace_path, "limit": 2}, num_requests=3)
    assert len(generate(spec, np.random.default_rng(0))) == 2


def test_trace_arrivals_with_synthetic_lengths(trace_path):
    spec = WorkloadSpec(trace={"path": trace_path, "start_s": 2.0},
                        arrival={"process": "trace", "time_scale": 0.5},
                        lengths={"prompt": {"dist": "fixed", "value": 64}, "output": {"dist": "fixed", "value": 8}})
    workload = generate(spec, np.random.default_rng(0))
    np.testing.assert_array_equal(workload.arrival_s, [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(workload.prompt_tokens, [64, 64, 64])
    np.testing.assert_array_equal(workload.output_tokens, [8, 8, 8])


def test_synthetic_arrivals_with_the_trace_lengths(trace_path):
    spec = WorkloadSpec(trace={"path": trace_path}, arrival={"process": "constant", "rate_rps": 10.0})
    workload = generate(spec, np.random.default_rng(0))
    np.testing.assert_allclose(workload.arrival_s, [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_array_equal(workload.prompt_tokens, [100, 200, 300, 400])


def test_poisson_arrivals_with_lengths_resampled_from_a_trace(trace_path):
    spec = WorkloadSpec(num_requests=200, arrival={"process": "poisson", "rate_rps": 1.0},
                        lengths={"prompt": {"dist": "empirical", "trace": trace_path, "column": "prompt"},
                                 "output": {"dist": "empirical", "trace": {"path": trace_path, "limit": 2},
                                            "column": "output"}})
    workload = generate(spec, np.random.default_rng(1))
    np.testing.assert_array_equal(np.unique(workload.prompt_tokens), [100, 200, 300, 400])
    np.testing.assert_array_equal(np.unique(workload.output_tokens), [10, 20])


def test_all_at_once_with_alpaca_preset():
    spec = WorkloadSpec(num_requests=4, arrival={"process": "all_at_once"}, lengths={"preset": "alpaca"},
                        name="offline")
    workload = generate(spec, np.random.default_rng(0))
    np.testing.assert_array_equal(workload.arrival_s, [0.0, 0.0, 0.0, 0.0])
    assert workload.name == "offline"


def test_building_a_spec_does_no_io(tmp_path):
    missing = str(tmp_path / "missing.csv")
    spec = WorkloadSpec(trace=missing)
    with pytest.raises(TraceError, match="no such trace file"):
        generate(spec, np.random.default_rng(0))


def test_embedded_trace_name_resolves():
    spec = WorkloadSpec(trace={"path": "azure_conv_2023", "max_context_tokens": 2048}, num_requests=10)
    workload = generate(spec, np.random.default_rng(0))
    assert len(workload) == 10
    assert np.all(workload.final_tokens <= 2048)


SYNTHETIC = {"num_requests": 5, "arrival": {"process": "poisson", "rate_rps": 1.0}, "lengths": {"preset": "sharegpt"}}


@pytest.mark.parametrize("change, message", [
    ({"arrival": {"process": "poison"}}, "'poisson', 'gamma', 'constant', 'all_at_once', 'trace'"),
    ({"arrival": {"process": "poisson", "rate_rps": 0}}, "greater than 0"),
    ({"arrival": {"process": "gamma", "rate_rps": 1.0}}, "cv\n  Field required"),
    ({"arrival": {"process": "trace"}}, "'trace' needs the 'trace' section"),
    ({"lengths": {"preset": "chat"}}, "'sharegpt' or 'alpaca'"),
    ({"lengths": {"from_trace": True}}, "without a 'trace', 'lengths' needs"),
    ({"lengths": {"preset": "sharegpt", "from_trace": True}}, "exactly one of"),
    ({"lengths": {"prompt": {"dist": "fixed", "value": 4}}}, "give both 'prompt' and 'output'"),
    ({"lengths": {"prompt": {"dist": "normal"}, "output": {"dist": "fixed", "value": 1}}},
     "'fixed', 'uniform', 'lognormal', 'exponential', 'empirical'"),
    ({"lengths": {"prompt": {"dist": "uniform", "low": 9, "high": 3}, "output": {"dist": "fixed", "value": 1}}},
     "high \\(3\\) must be >= low \\(9\\)"),
    ({"lengths": {"prompt": {"dist": "lognormal", "mean": 5000, "sigma": 1, "max_tokens": 1024},
                  "output": {"dist": "fixed", "value": 1}}}, "strictly between min_tokens and max_tokens"),
    ({"num_requests": None}, "'num_requests' is required"),
    ({"num_requests": 0}, "greater than 0"),
    ({"rate_rps": 3}, "Extra inputs are not permitted"),
    ({"trace": {"path": "x.csv", "format": "csv"}}, "needs 'columns'"),
    ({"trace": {"path": "x.csv", "start_s": 10, "end_s": 5}}, "end_s \\(5.0\\) must be greater than start_s"),
    ({"trace": {"path": "x.csv", "format": "parquet"}}, "'auto', 'processed', 'azure', 'burstgpt', 'mooncake', 'qwen' or 'csv'"),
])
def test_bad_specs_name_the_field_and_allowed_values(change, message):
    with pytest.raises(ValidationError, match=message):
        WorkloadSpec.model_validate({**SYNTHETIC, **change})


def test_csv_trace_with_columns_in_spec(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("when_us,p,o\n0,3,4\n500000,5,6\n")
    spec = WorkloadSpec(trace={"path": str(path), "format": "csv", "columns": {
        "arrival_column": "when_us", "prompt_column": "p", "output_column": "o", "time_unit": "us"}})
    workload = generate(spec, np.random.default_rng(0))
    np.testing.assert_allclose(workload.arrival_s, [0.0, 0.5])
    np.testing.assert_array_equal(workload.output_tokens, [4, 6])


def test_resolved_spec_round_trips_through_yaml(trace_path):
    spec = WorkloadSpec(trace=trace_path, num_requests=2)
    dumped = yaml.safe_dump(spec.model_dump(mode="json"))
    again = WorkloadSpec.model_validate(yaml.safe_load(dumped))
    assert again == spec
    assert again.arrival.process == "trace" and again.lengths.from_trace


def test_synthetic_prefixes_say_what_each_request_shares():
    import numpy as np

    from workloads.prefixes import PrefixPlan, with_prefixes

    rng = np.random.default_rng(0)
    prompts, outputs = np.array([10, 20, 30, 40, 50]), np.array([5, 6, 7, 8, 9])
    arr, p, o, seg = with_prefixes(np.array([0.0, 100.0]), prompts, outputs,
                                   PrefixPlan(shared_tokens=64, tenants=2, turns=3, think_time_s=1.0), rng)
    assert len(arr) == 5 and np.all(np.diff(arr) >= 0)
    for s_, pp, oo in zip(seg, p, o):
        assert sum(length for _, length in s_) == pp + oo
        assert s_[0][1] == 64 and s_[0][0] in (0, 1)          # a tenant's system prompt first
    # the first conversation: turn 2's prompt is turn 1's prompt and answer plus a new message
    first = [s_ for s_ in seg if len(s_) in (3, 5, 7) and s_[1][1] == 10]
    turn1 = first[0]
    turn2 = next(s_ for s_ in seg if len(s_) == 5 and s_[:3] == turn1)
    assert turn2[3][1] == 20 and p[seg.index(turn2)] == 64 + 10 + 5 + 20
