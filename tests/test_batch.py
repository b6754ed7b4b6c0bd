"""``Batch``: a frozen value whose hand-written ``__init__`` is its fields'."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

from sim.batch import Batch


def test_init_takes_the_fields_in_order_with_their_defaults():
    params = list(inspect.signature(Batch).parameters.values())
    fields = dataclasses.fields(Batch)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [f.default for f in fields]


def test_every_field_is_set_from_its_argument():
    values = {f.name: (f"value of {f.name}",) for f in dataclasses.fields(Batch)}
    values["prefill_context_tokens"] = values["prefill_new_tokens"]        # the one check: equal lengths
    batch = Batch(**values)
    assert {name: getattr(batch, name) for name in values} == values


def test_a_batch_is_frozen_and_compares_by_its_shapes():
    a = Batch(prefill_new_tokens=(5,), prefill_context_tokens=(0,), decode_context_tokens=(3, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.kv_layout = "contiguous"    # type: ignore[misc]
    b = dataclasses.replace(a, held_tokens=(5, 3, 4), decode_sum_max=(7, 4))
    assert a == b and hash(a) == hash(b)
    assert dataclasses.replace(a, kv_layout="contiguous") != a
    with pytest.raises(ValueError, match="differ in length"):
        Batch(prefill_new_tokens=(5,))
