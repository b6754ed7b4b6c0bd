"""The Workload value, its statistics, the histogram figure and the CLI command."""
import argparse
import json
import math

import numpy as np
import pytest

from experiments.cli import main
from workloads.cli import register
from workloads.stats import format_stats, plot_length_histograms, trace_stats
from workloads.types import Workload


def tiny():
    return Workload(arrival_s=[0.0, 1.0, 2.0, 4.0], prompt_tokens=[10, 20, 30, 40],
                    output_tokens=[1, 2, 3, 100], name="tiny")


def test_workload_columns_are_typed_copies_and_read_only():
    prompt = np.array([1, 2])
    workload = Workload([0, 1], prompt, [3, 4])
    prompt[0] = 99
    assert workload.prompt_tokens[0] == 1
    assert workload.arrival_s.dtype == np.float64 and workload.output_tokens.dtype == np.int64
    with pytest.raises(ValueError):
        workload.arrival_s[0] = 5.0


def test_head_and_slices_keep_order_and_name():
    workload = tiny()
    assert len(workload.head(2)) == 2
    np.testing.assert_array_equal(workload.head(10).prompt_tokens, [10, 20, 30, 40])
    np.testing.assert_array_equal(workload[1:3].arrival_s, [1.0, 2.0])
    assert workload[::2].name == "tiny"
    np.testing.assert_array_equal(workload.final_tokens, [11, 22, 33, 140])
    assert workload.duration_s == 4.0


@pytest.mark.parametrize("columns, message", [
    (([1.0, 0.5], [1, 1], [1, 1]), "arrival_s decreases at index 1"),
    (([0.0, 1.0], [1, 0], [1, 1]), "prompt_tokens must be >= 1, got 0 at index 1"),
    (([0.0], [1, 2], [1]), "differ in length"),
    (([-1.0], [1], [1]), "negative at index 0"),
    (([math.nan], [1], [1]), "non-finite value at index 0"),
    (([0.0], [1.5], [1]), "whole token counts"),
])
def test_bad_workload_columns_are_rejected(columns, message):
    with pytest.raises(ValueError, match=message):
        Workload(*columns)


def test_bad_workload_indexing_is_rejected():
    with pytest.raises(TypeError):
        tiny()[0]
    with pytest.raises(ValueError, match="positive step"):
        tiny()[::-1]


def test_stats_of_a_tiny_workload_are_exact():
    stats = trace_stats(tiny())
    assert stats["num_requests"] == 4 and stats["duration_s"] == 4.0
    assert stats["mean_rate_rps"] == pytest.approx(0.75)
    # gaps 1, 1, 2: mean 4/3, population std sqrt(2)/3
    assert stats["interarrival_cv"] == pytest.approx(math.sqrt(2) / 4)
    cv = math.sqrt(2) / 4
    assert stats["burstiness"] == pytest.approx((cv - 1) / (cv + 1))
    assert stats["prompt_tokens"] == pytest.approx({"mean": 25.0, "p50": 25.0, "p90": 37.0, "p99": 39.7, "max": 40})
    assert stats["output_tokens"]["max"] == 100
    assert stats["total_tokens"]["mean"] == pytest.approx(51.5)


def test_stats_undefined_for_simultaneous_arrivals():
    stats = trace_stats(Workload([0.0, 0.0, 0.0], [1, 2, 3], [1, 1, 1]))
    assert stats["mean_rate_rps"] is None and stats["interarrival_cv"] is None
    assert "mean_rate_rps     n/a" in format_stats(stats)


def test_format_stats_lists_every_figure():
    text = format_stats(trace_stats(tiny()))
    assert "requests          4" in text
    assert "mean_rate_rps     0.750" in text
    assert text.splitlines()[-3].split() == ["prompt", "25.0", "25.0", "37.0", "39.7", "40"]


def test_histogram_is_written_atomically(tmp_path):
    path = plot_length_histograms(tiny(), tmp_path / "plots" / "lengths.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["lengths.png"]


def test_histogram_rejects_unknown_image_format(tmp_path):
    with pytest.raises(ValueError, match="unsupported image format 'xyz'"):
        plot_length_histograms(tiny(), tmp_path / "lengths.xyz")
    assert list(tmp_path.iterdir()) == []


def test_every_cli_option_has_help():
    parser = argparse.ArgumentParser()
    workloads = register(parser.add_subparsers())
    stats = workloads._subparsers._group_actions[0].choices["stats"]
    for action in stats._actions:
        assert action.help, f"option {action.dest} has no help text"


def test_cli_stats_prints_the_table(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,1\n1,20,2\n2,30,3\n4,40,100\n")
    assert main(["workloads", "stats", str(path), "--limit", "3", "--plot", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert "t.csv (processed): 4 rows read, 3 kept" in out
    assert "requests          3" in out
    assert (tmp_path / "h.png").is_file()


def test_cli_stats_json_and_csv_columns(tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("ms,a,b\n0,5,6\n2000,7,8\n")
    argv = ["workloads", "stats", str(path), "--format", "csv", "--arrival-column", "ms",
            "--prompt-column", "a", "--output-column", "b", "--time-unit", "ms", "--json"]
    assert main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["duration_s"] == 2.0 and stats["num_requests"] == 2


def test_cli_bad_trace_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,x,1\n")
    assert main(["workloads", "stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"pagesim: error: {path}: row 2: num_prefill_tokens is not a finite number: 'x'\n"
