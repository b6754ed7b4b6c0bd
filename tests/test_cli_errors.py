"""Bad input through the whole ``pagesim`` command: one ``pagesim: error:``
line naming the field, file or row, exit code 2, no traceback, and the
``--out`` directory neither created nor touched. Plus the one thing that
looks like bad input but is not: a request longer than the model's context
is rejected and counted, and the run succeeds.

Every case runs in a fresh working directory (``tmp_path``), so configs,
traces and ``--out`` are short relative names that the messages quote.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bad_input_corpus import BASE, TINY_MODEL
from bad_input_corpus import HEADER as TRACE_HEADER
from experiments.atomic import umask
from experiments.cli import main
from experiments.config import set_path

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER, MARKER_TEXT = "keep-me.txt", "results of an earlier run\n"
PAGESIM_MARKER, PAGESIM_MARKER_TEXT = ".pagesim", '{"written_by": "pagesim", "what": "run"}\n'

BROKEN_YAML = "name: broken\nworkload:\n  num_requests: 20\n  arrival: {process: poisson, rate_rps: [5}\n"
BAD_ROW_TRACE = TRACE_HEADER + "0.0,10,5\n0.5,12,6\n1.0,14,lots\n1.5,16,8\n"


def variant(changes: dict | None = None, base: dict = BASE) -> dict:
    """A deep copy of ``base`` with dotted paths set, e.g. {"engine.batching.policy": "static"}."""
    tree = copy.deepcopy(base)
    for dotted, value in (changes or {}).items():
        set_path(tree, dotted, value)
    return tree


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(capsys, argv: list[str]) -> CliResult:
    """``main(argv)`` in-process; argparse's own errors arrive as SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@dataclass(frozen=True)
class OutDir:
    """The ``--out`` directory of a failing command, absent or holding an earlier result."""

    path: Path
    preexisting: bool

    def assert_untouched(self) -> None:
        if self.preexisting:
            assert sorted(p.name for p in self.path.iterdir()) == [PAGESIM_MARKER, MARKER]
            assert (self.path / MARKER).read_text() == MARKER_TEXT
            assert (self.path / PAGESIM_MARKER).read_text() == PAGESIM_MARKER_TEXT
        else:
            assert not self.path.exists(), f"{self.path} was created by a failing command"
        leftovers = [p.name for p in self.path.parent.iterdir() if p.name.startswith(".")]
        assert leftovers == [], f"temporary output left behind: {leftovers}"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(params=[False, True], ids=["out-absent", "out-preexisting"])
def out_dir(request, workdir) -> OutDir:
    path = workdir / "out"
    if request.param:
        path.mkdir()
        (path / MARKER).write_text(MARKER_TEXT)
        (path / PAGESIM_MARKER).write_text(PAGESIM_MARKER_TEXT)   # an earlier pagesim run
    return OutDir(path, request.param)


def write_inputs(config: dict | str | None, files: dict[str, str]) -> None:
    """``exp.yaml`` (a tree, raw text, or nothing for a missing file) and extra files, in the cwd."""
    if isinstance(config, dict):
        Path("exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    elif isinstance(config, str):
        Path("exp.yaml").write_text(config)
    for name, text in files.items():
        Path(name).write_text(text)


def assert_one_error_line(result: CliResult, *needles: str) -> None:
    lines = error_lines(result.stderr)
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert lines[0].startswith("pagesim: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


BAD_INPUTS = [
    pytest.param("run", BROKEN_YAML, [], {}, ["exp.yaml: line 4: not valid YAML"], id="broken-yaml"),
    pytest.param("run", variant({"bogus_key": 1}), [], {},
                 ["exp.yaml: bogus_key: unknown key; allowed:"], id="unknown-top-level-key"),
    pytest.param("run", variant({"engine.memory.blocksize": 16}), [], {},
                 ["exp.yaml: engine.memory.blocksize: unknown key; allowed:"],
                 id="unknown-nested-key"),
    pytest.param("run", variant({"engine.batching.policy": "dynamic"}), [], {},
                 ["engine.batching.policy: ", "'static' or 'continuous'", "(got 'dynamic')"],
                 id="bad-enum-value"),
    pytest.param("run", variant({"workload.arrival.rate_rps": -2.5}), [], {},
                 ["exp.yaml: workload.arrival.", "rate_rps: Input should be greater than 0", "(got -2.5)"],
                 id="negative-rate"),
    pytest.param("run", None, [], {}, ["exp.yaml: no such config file"], id="missing-config-file"),
    pytest.param("run", variant({"workload": {"trace": {"path": "no_such_trace.csv"}}}), [], {},
                 ["no_such_trace.csv: no such trace file"], id="missing-trace-file"),
    pytest.param("run", variant({"workload": {"trace": {"path": "bad_row.csv"}}}), [],
                 {"bad_row.csv": BAD_ROW_TRACE},
                 ["bad_row.csv: row 3: num_decode_tokens is not a finite number: 'lots'"],
                 id="malformed-trace-row"),
    pytest.param("run", BASE, ["--set", "engine.batching.policy"], {},
                 ["--set 'engine.batching.policy': expected KEY=VALUE"], id="set-without-equals"),
    pytest.param("run", BASE, ["--set", "engine.batching.policy=[static"], {},
                 ["--set 'engine.batching.policy=[static': value is not valid YAML"], id="set-bad-yaml"),
    pytest.param("run", BASE, ["--set", "engine.batching.max_batch=4"], {},
                 ["exp.yaml: engine.batching.max_batch: unknown key; allowed:"],
                 id="set-unknown-key"),
    pytest.param("run", BASE, ["--set", "seed.value=3"], {},
                 ["--set seed.value: seed is not a mapping"], id="set-through-scalar"),
    pytest.param("sweep", variant({"sweep": {"engine.memory.block_size": [16, 24]}}), [], {},
                 ["exp.yaml: sweep engine.memory.block_size=24: ", "power of two", "got 24"],
                 id="sweep-invalid-value"),
    pytest.param("sweep", BASE, [], {}, ["exp.yaml: has no 'sweep:' section"], id="sweep-without-section"),
]


@pytest.mark.parametrize(("command", "config", "extra_argv", "files", "needles"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_no_output(capsys, out_dir, command, config, extra_argv,
                                                    files, needles):
    write_inputs(config, files)
    result = run_cli(capsys, [command, "exp.yaml", "--out", "out", "--quiet", "--no-plots", *extra_argv])
    assert_one_error_line(result, *needles)
    assert result.stdout == ""
    out_dir.assert_untouched()


def test_jobs_zero_is_refused_with_exit_2(capsys, out_dir):
    write_inputs(variant({"sweep": {"seed": [0, 1]}}), {})
    result = run_cli(capsys, ["sweep", "exp.yaml", "--out", "out", "--jobs", "0", "--quiet"])
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr)[-1] == "pagesim: error: --jobs must be >= 1 (got 0)"
    out_dir.assert_untouched()


def test_jobs_zero_error_is_a_single_line(capsys, workdir):
    write_inputs(variant({"sweep": {"seed": [0, 1]}}), {})
    result = run_cli(capsys, ["sweep", "exp.yaml", "--out", "out", "--jobs", "0", "--quiet"])
    assert_one_error_line(result, "--jobs must be >= 1 (got 0)")


def test_error_path_is_the_dotted_config_path(capsys, workdir):
    write_inputs(variant({"workload.arrival.rate_rps": -2.5}), {})
    result = run_cli(capsys, ["run", "exp.yaml", "--out", "out", "--quiet"])
    assert_one_error_line(result, "exp.yaml: workload.arrival.rate_rps: Input should be greater than 0")


def test_inline_model_error_names_the_bad_field(capsys, workdir):
    write_inputs(variant({"model": {**TINY_MODEL, "num_layers": 0}}), {})
    result = run_cli(capsys, ["run", "exp.yaml", "--out", "out", "--quiet"])
    assert_one_error_line(result, "model.num_layers: must be a positive integer (got 0)")


def test_sweep_point_failing_at_run_time_leaves_no_output(capsys, workdir):
    write_inputs(variant({"workload": {"trace": {"path": "azure_conv_2023", "limit": 5}},
                          "sweep": {"workload.trace.path": ["no_such_trace.csv"]}}), {})
    result = run_cli(capsys, ["sweep", "exp.yaml", "--out", "out", "--jobs", "1", "--quiet", "--no-plots"])
    assert_one_error_line(result, "no_such_trace.csv: no such trace file")
    OutDir(workdir / "out", preexisting=False).assert_untouched()


def test_subprocess_bad_trace_row_prints_one_line_and_no_traceback(tmp_path):
    """The same contract seen from outside: a real interpreter, a real exit status."""
    (tmp_path / "bad_row.csv").write_text(BAD_ROW_TRACE)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(variant({"workload": {"trace": {"path": "bad_row.csv"}}})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "run", "exp.yaml", "--out", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "pagesim: error: bad_row.csv: row 3: num_decode_tokens is not a finite number: 'lots'\n"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- not an error: rejection


def over_context_config(workload: dict) -> dict:
    """The tiny model (64-token context) with a small paged cache and a 10 ms step."""
    return {
        "name": "over-context", "seed": 0, "model": TINY_MODEL, "workload": workload,
        "engine": {"memory": {"num_blocks": 64},
                   "cost_model": {"kind": "linear", "base_s": 0.01, "per_prefill_token_s": 0.0,
                                  "per_decode_seq_s": 0.0, "per_context_token_s": 0.0}},
    }


def test_requests_longer_than_the_context_are_rejected_not_an_error(capsys, workdir):
    write_inputs(over_context_config({
        "num_requests": 6, "arrival": {"process": "constant", "rate_rps": 10.0},
        "lengths": {"prompt": {"dist": "fixed", "value": 50}, "output": {"dist": "fixed", "value": 20}},
    }), {})
    result = run_cli(capsys, ["run", "exp.yaml", "--out", "out", "--quiet", "--no-plots"])
    assert result.exit_code == 0, result.stderr
    requests = pd.read_parquet("out/requests.parquet")
    assert requests["status"].tolist() == ["rejected"] * 6
    assert requests["reason"].tolist() == ["needs 70 tokens of context, tiny allows 64"] * 6
    assert requests["e2e_s"].isna().all()
    summary = json.loads(Path("out/summary.json").read_text())
    assert summary["counts"] == {"arrived": 6, "finished": 0, "rejected": 6, "unfinished": 0}
    assert summary["throughput_rps"] is None


def test_context_limit_is_inclusive(capsys, workdir):
    """64 tokens fit a 64-token context, 65 do not; the others still run to the end."""
    Path("edge.csv").write_text(TRACE_HEADER + "0.0,44,20\n0.1,45,20\n0.2,10,5\n")
    write_inputs(over_context_config({"trace": {"path": "edge.csv"}}), {})
    result = run_cli(capsys, ["run", "exp.yaml", "--out", "out", "--quiet", "--no-plots"])
    assert result.exit_code == 0, result.stderr
    requests = pd.read_parquet("out/requests.parquet")
    assert requests["status"].tolist() == ["finished", "rejected", "finished"]
    assert requests["reason"].tolist() == ["", "needs 65 tokens of context, tiny allows 64", ""]
    summary = json.loads(Path("out/summary.json").read_text())
    assert summary["counts"] == {"arrived": 3, "finished": 2, "rejected": 1, "unfinished": 0}


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """``pagesim workloads stats TRACE | head -1``: the reader goes away
    before pagesim has written; pagesim stops quietly, as if by SIGPIPE."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "workloads", "stats", "azure_conv_2023"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                      # the reader is gone before the first line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_is_refused_before_simulating(capsys, workdir):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    write_inputs(variant({"workload.num_requests": 10}), {})
    try:
        result = run_cli(capsys, ["run", "exp.yaml", "--out", "locked/run", "--quiet", "--no-plots"])
    finally:
        locked.chmod(0o755)
    assert_one_error_line(result, "--out locked/run: ", "is not writable")
    assert list(locked.iterdir()) == []


def test_stats_plot_has_the_permissions_of_every_other_output(capsys, workdir):
    """mkstemp makes 0600 files; a plot must be as readable as a run's files."""
    Path("t.csv").write_text(TRACE_HEADER + "0.0,10,5\n0.5,12,6\n")
    assert run_cli(capsys, ["workloads", "stats", "t.csv", "--plot", "h.png"]).exit_code == 0
    write_inputs(variant({"workload.num_requests": 5}), {})
    assert run_cli(capsys, ["run", "exp.yaml", "--out", "out", "--quiet"]).exit_code == 0
    mode = lambda p: Path(p).stat().st_mode & 0o777
    assert mode("h.png") == mode("out/summary.json") == mode("out/plots/latency_cdf.png") == 0o666 & ~umask()


def test_help_and_argument_errors_import_nothing_heavy(tmp_path):
    """``pagesim --help``, an argument error and an input path that is not
    there end before numpy, pandas or pydantic load (what made them take
    from most of a second to three seconds), each exiting 2 with its line."""
    missing = str(tmp_path / "nowhere")
    cases = [["run", missing, "--out", "o"], ["sweep", missing, "--out", "o"], ["capacity", missing, "--out", "o"],
             ["serve-suite", missing, "--out", "o"], ["fidelity", missing, "--out", "o"], ["plot", missing]]
    code = ("import sys\nfrom experiments.cli import main\n"
            "for argv in (['--help'], ['workloads', 'stats', '--help'], ['run', '--bogus']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            f"codes = [main(argv) for argv in {cases!r}]\n"
            "print(codes, sorted(m for m in ('numpy', 'pandas', 'pydantic', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"{[2] * len(cases)} []", proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()[-len(cases):]
    assert [line.split(": ")[-1] for line in errors] == ["no such config file"] * 4 + [
        "not a run directory (no summary.json)",
        "not a run (summary.json), sweep (sweep.csv) or capacity (capacity.csv) directory"], errors
