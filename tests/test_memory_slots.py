"""The paged manager's free-block queue and slot table against plain models."""
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory.paged import PagedKVManager
from sim.memory.slots import BlockQueue, SlotTable


@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(1, 40), ops=st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=60))
def test_block_queue_is_a_fifo_of_block_ids(num_blocks, ops):
    """take/put in any order hand out exactly what a deque of 0..n-1 would,
    across the virgin range and the ring's wrap-around."""
    queue, model, held = BlockQueue(num_blocks), deque(range(num_blocks)), []
    for take, count in ops:
        if take:
            count = min(count, len(model))
            got = queue.take(count).tolist()
            assert got == [model.popleft() for _ in range(count)]
            held.extend(got)
        elif held:
            back, held = held[:count], held[count:]
            queue.put(back)
            model.extend(back)
        assert len(queue) == len(model) and queue.ids() == list(model)


def test_a_huge_pool_costs_memory_only_for_the_blocks_in_use():
    kv = PagedKVManager(num_blocks=10**12, block_size=16, watermark_frac=0.0)
    kv.allocate(1, 40, 40)
    assert kv.block_table(1) == [0, 1, 2] and kv.num_free_blocks == 10**12 - 3
    kv.free(1)
    kv.allocate(2, 16, 16)
    assert kv.block_table(2) == [3]            # never-used ids come before released ones
    assert kv._free._ring.nbytes < 10**4


def test_slot_table_reuses_the_lowest_free_slot_and_grows():
    table = SlotTable({"x": np.int64}, capacity=2)
    assert [table.add(r) for r in (10, 11, 12)] == [0, 1, 2]
    table.cols["x"][2] = 7
    assert table.release(11) == 1 and table.add(13) == 1
    assert table.capacity == 4 and table.cols["x"][2] == 7 and table.slot_of == {10: 0, 12: 2, 13: 1}
