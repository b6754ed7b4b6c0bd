"""``Batch``: a frozen value whose hand-written ``__init__`` is its fields';
``TokenCounts``: a per-row field kept in an array until it is read."""
from __future__ import annotations

import dataclasses
import inspect
import pickle

import numpy as np
import pytest

from sim.batch import SMALL_COUNTS, Batch, TokenCounts, token_counts


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


def test_token_counts_read_as_the_tuple_they_hold():
    counts = TokenCounts(np.array([7, 3, 12], np.int64))
    assert len(counts) == 3 and counts.totals() == (22, 12)
    assert counts == (7, 3, 12) and (7, 3, 12) == counts and counts != (7, 3) and counts != [7, 3, 12]
    assert hash(counts) == hash((7, 3, 12)) and {(7, 3, 12): "x"}[counts] == "x"
    assert list(counts) == [7, 3, 12] and counts[1:] == (3, 12) and counts[-1] == 12
    assert sum(counts) == 22 and max(counts) == 12 and repr(counts) == "(7, 3, 12)"
    assert all(type(c) is int for c in counts)
    array = np.asarray(counts)
    with pytest.raises(ValueError):
        array[0] = 1                          # the counts are immutable through their array too
    assert np.asarray(counts, np.float64).tolist() == [7.0, 3.0, 12.0]
    assert pickle.loads(pickle.dumps(counts)) == counts
    assert TokenCounts(np.zeros(0, np.int64)).totals() == (0, 0)


def test_turned_token_counts_read_as_the_turned_tuple():
    """``TokenCounts(array, start)`` is ``array[start:]`` then ``array[:start]``."""
    turned = TokenCounts(np.array([7, 3, 12, 5], np.int64), 3)
    assert turned == (5, 7, 3, 12) and hash(turned) == hash((5, 7, 3, 12)) and turned[0] == 5
    assert len(turned) == 4 and turned.totals() == (27, 12) and list(turned) == [5, 7, 3, 12]
    array = np.asarray(turned)
    assert array.tolist() == [5, 7, 3, 12]
    with pytest.raises(ValueError):
        array[0] = 1
    assert np.asarray(turned, np.float64).tolist() == [5.0, 7.0, 3.0, 12.0]
    assert pickle.loads(pickle.dumps(turned)) == turned


def test_a_batch_of_token_counts_equals_one_of_tuples():
    lazy = Batch(decode_context_tokens=TokenCounts(np.array([5, 9], np.int64)))
    plain = Batch(decode_context_tokens=(5, 9))
    assert lazy == plain and hash(lazy) == hash(plain)
    assert lazy.decode_totals() == plain.decode_totals() == (14, 9)
    assert lazy.num_tokens == plain.num_tokens == 2


def test_a_few_counts_stay_a_tuple_many_stay_an_array():
    few, many = np.arange(SMALL_COUNTS, dtype=np.int64), np.arange(SMALL_COUNTS + 1, dtype=np.int64)
    assert type(token_counts(few)) is tuple and token_counts(few) == tuple(range(SMALL_COUNTS))
    assert isinstance(token_counts(many), TokenCounts) and token_counts(many) == tuple(range(SMALL_COUNTS + 1))
