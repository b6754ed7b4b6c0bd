"""The validation/benchmark harness pieces that need no GPU: the CLI wiring,
result bookkeeping, the report, and one quick CPU validation case."""
import argparse
import subprocess
import sys

import pytest
import torch

from kernels.harness import bench_report
from kernels.harness.bench_timing import gpu_slug
from kernels.harness.validate import CaseResult, check_decode, format_table, relative_error
from kernels.harness.validate_cases import decode_cases


def test_cli_module_imports_no_torch_and_registers_both_actions():
    code = ("import argparse, sys, kernels.harness.cli; p = argparse.ArgumentParser(); "
            "kernels.harness.cli.register(p.add_subparsers()); "
            "a = p.parse_args(['kernels', 'validate', '--device', 'cpu', '--quick']); "
            "b = p.parse_args(['kernels', 'bench', '--quick', '--out', 'x']); "
            "print('torch' in sys.modules, 'triton' in sys.modules, a.device, a.quick, b.out)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "cpu", "True", "x"]


def test_cli_rejects_unknown_device():
    from kernels.harness.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["kernels", "validate", "--device", "tpu"])


def test_case_result_fails_on_nan_error_or_tolerance():
    ok = CaseResult("k", "c", "float32", "v", 1e-6, 1e-5, 0)
    assert ok.ok
    assert not CaseResult("k", "c", "float32", "v", 1e-6, 1e-5, 3).ok
    assert not CaseResult("k", "c", "float32", "v", 2e-5, 1e-5, 0).ok
    assert not CaseResult("k", "c", "float32", "-", float("nan"), 1e-5, 0, "ERROR boom").ok
    table = format_table([ok])
    assert table.splitlines()[2].startswith("PASS")


def test_relative_error_counts_nan_as_infinite():
    ref = torch.ones(4)
    assert relative_error(ref, ref) == 0.0
    assert relative_error(torch.tensor([1.0, 1.0, 1.0, 3.0]), ref) == pytest.approx(1.0)
    assert relative_error(torch.tensor([1.0, float("nan"), 1.0, 1.0]), ref) == float("inf")


def test_one_cpu_decode_case_passes_with_split_rows():
    case = decode_cases("cpu", quick=True)[0]
    rows = check_decode(case, "cpu", seed=0)
    assert all(r.ok for r in rows)
    assert {r.kernel for r in rows} == {"paged_decode", "contiguous_decode"}
    assert any("vs splits=1" in r.variant for r in rows)


def test_gpu_grid_covers_the_required_cases():
    cases = decode_cases("cuda", quick=False)
    groups = {c.num_heads // c.num_kv_heads for c in cases}
    assert {1, 3, 4, 6, 8} <= groups
    assert {8, 16, 32, 64, 128} <= {c.block_size for c in cases}
    assert max(len(c.context_lens) for c in cases) == 256
    assert max(max(c.context_lens) for c in cases) == 32768
    assert any(c.pool_blocks >= 32768 and c.high_block_ids for c in cases)
    assert any(1 in c.context_lens for c in cases)


def test_gpu_slug():
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_slug("NVIDIA A100-SXM4-40GB") == "a100"
    assert gpu_slug("Some Card") == "some-card"


def _decode_row(kernel, batch, time_us, block_size=0, frac=0.5):
    return {"geometry": "llama-3-8b", "batch": batch, "context": 4096, "kernel": kernel,
            "block_size": block_size, "num_splits": 1, "time_us": time_us, "gbps": 1000.0,
            "frac_copy_bw": frac, "check_rel_err": 0.0, "host_us": None}


def test_summary_reports_targets_and_ratios(tmp_path):
    rows = [_decode_row("contiguous", 64, 100.0), _decode_row("sdpa", 64, 120.0),
            _decode_row("paged", 64, 105.0, 16, frac=0.85),
            _decode_row("paged", 64, 112.0, 32)]
    info = {"gpu": "Test GPU", "commit": "abc"}
    path = tmp_path / "summary.md"
    bench_report.write_summary(path, info, {"copy_gbps": 3000.0, "matmul_tflops": 800.0}, rows,
                               [], [], [], "prefill skipped")
    text = path.read_text()
    assert "| paged, llama-3-8b, B=64 x 4096, bs 16 | >= 80% | 85.0%" in text
    assert "worst 1.120" in text and "MISSED on 1/2 cases" in text
    assert "prefill skipped" in text
    bench_report.write_csv(tmp_path / "d.csv", rows)
    assert (tmp_path / "d.csv").read_text().splitlines()[0].startswith("geometry,batch,context")
