"""``RunningSet``: the running sequences' columns, clocks applied, against a
plain list of (request, context, generated) kept by hand."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.policies.running import NO_FINISH, RunningSet
from sim.request import Request


def _admitted(i: int, prompt: int, output: int) -> Request:
    req = Request(request_id=i, arrival_s=0.0, prompt_tokens=prompt, output_tokens=output)
    req.computed_tokens = prompt
    return req


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 500), st.integers(2, 40)), min_size=1, max_size=24),
       steps=st.integers(0, 5), picks=st.lists(st.integers(0, 23), max_size=24))
def test_removing_rows_keeps_the_others_in_order_with_their_counts(sizes, steps, picks):
    run, model = RunningSet(capacity=4), []
    for i, (prompt, output) in enumerate(sizes):
        req = _admitted(i, prompt, output)
        run.add(req, slot=100 + i)
        model.append([req, prompt, 0])
        if i % 3 == 2:                   # the clocks move between admissions too
            run.grow(run.n)
            run.emit_all()
            for row in model:
                row[1] += 1
                row[2] += 1
    assert run.live_slots.tolist() == [100 + i for i in range(len(sizes))]   # through the columns' growth
    run.grow(run.n, steps)
    run.emit_all(steps)
    for row in model:
        row[1] += steps
        row[2] += steps
    # any subset: one row, adjacent rows, the first and the last, more than a few
    at = sorted({p for p in picks if p < len(model)})
    removed = run.remove(np.array(at, np.int64))
    assert removed == [model[p][0] for p in at]
    assert [(r.computed_tokens, r.generated_tokens) for r in removed] == [tuple(model[p][1:]) for p in at]
    kept = [row for p, row in enumerate(model) if p not in set(at)]
    assert run.n == len(kept) and run.reqs == [row[0] for row in kept]
    assert run.contexts(run.n).tolist() == [row[1] for row in kept]
    assert [run.generated(i) for i in range(run.n)] == [row[2] for row in kept]
    assert run.slot[: run.n].tolist() == [100 + row[0].request_id for row in kept]
    assert run.live_slots.tolist() == run.slot[: run.n].tolist()     # the view kept for the KV manager
    assert run.context_totals() == (sum(r[1] for r in kept), max((r[1] for r in kept), default=0))
    left = [row[0].output_tokens - row[2] for row in kept]
    assert run.steps_to_finish() == (min(left) if left else NO_FINISH)
    assert run.done_rows().tolist() == [i for i, n in enumerate(left) if n <= 0]
