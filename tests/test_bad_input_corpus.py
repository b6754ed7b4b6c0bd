"""Every case of the bad-input corpus (``tests/bad_input_corpus.py``): exit
code 2, exactly one ``pagesim: error:`` line containing the expected words,
nothing on stdout, no traceback, and the working directory -- the earlier
run in ``out/`` and every input -- byte-for-byte as it was."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from bad_input_corpus import CASES, Case
from experiments.cli import main

EARLIER_RUN = {"out/.pagesim": json.dumps({"written_by": "pagesim", "what": "run"}) + "\n",
               "out/summary.json": '{"earlier": true}\n'}


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a directory, or a file's content hash."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def set_up(case: Case, root: Path) -> None:
    if isinstance(case.config, dict):
        (root / "exp.yaml").write_text(yaml.safe_dump(case.config, sort_keys=False))
    elif isinstance(case.config, str):
        (root / "exp.yaml").write_text(case.config)
    for name, content in {**EARLIER_RUN, **case.files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    set_up(case, root)
    before = snapshot(tmp_path)
    try:
        code = main(case.argv)
    except SystemExit as exc:           # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert lines[0].startswith("pagesim: error: "), lines[0]
    for needle in case.expect:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert captured.out == ""
    assert snapshot(tmp_path) == before, "the failing command changed files"
