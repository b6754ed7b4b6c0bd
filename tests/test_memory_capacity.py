"""KV capacity arithmetic against hand-computed numbers, and the memory config."""
import pytest
from pydantic import ValidationError

from sim.memory import (ContiguousKVManager, MemorySpec, PagedKVManager, build_kv_manager,
                        kv_capacity_tokens)
from sim.presets import HARDWARE, MODELS

LLAMA_7B = MODELS["llama-2-7b"]
H100 = HARDWARE["h100-sxm"]


def test_llama_2_7b_fp16_on_h100_at_0_9():
    # weights: per layer 4*4096^2 (q, k, v, o) + 3*4096*11008 (gated MLP) = 202,375,168;
    #   * 32 layers + 2*32000*4096 embeddings = 6,738,149,376 params * 2 B = 13,476,298,752 B
    # KV per token: 2 (K, V) * 32 layers * 32 heads * 128 * 2 B = 524,288 B
    # (80e9 * 0.9 - 13,476,298,752) / 524,288 = 58,523,701,248 / 524,288 = 111,625.10 -> 111,625
    assert LLAMA_7B.weight_bytes == 13_476_298_752
    assert LLAMA_7B.kv_bytes_per_token == 524_288
    assert kv_capacity_tokens(LLAMA_7B, H100, 0.9) == 111_625
    # a 1 GB activation reserve: 57,523,701,248 / 524,288 = 109,717.8 -> 109,717
    assert kv_capacity_tokens(LLAMA_7B, H100, 0.9, activation_reserve_bytes=10**9) == 109_717


def test_llama_3_8b_gqa_on_a100_40gb():
    # KV per token: 2 * 32 layers * 8 KV heads * 128 * 2 B = 131,072 B
    # (40e9 * 0.9 - 16,059,990,016) / 131,072 = 19,940,009,984 / 131,072 = 152,130.2 -> 152,130
    assert kv_capacity_tokens(MODELS["llama-3-8b"], HARDWARE["a100-40gb"], 0.9) == 152_130


def test_weights_that_do_not_fit_give_a_clear_message():
    with pytest.raises(ValueError, match=r"^llama-2-70b weights need 138\.0 GB, h100-sxm has 72\.0 GB "
                                         r"at gpu_memory_utilization=0\.9"):
        kv_capacity_tokens(MODELS["llama-2-70b"], H100, 0.9)
    with pytest.raises(ValueError, match=r"\+ 60\.0 GB activation reserve"):
        kv_capacity_tokens(LLAMA_7B, H100, 0.9, activation_reserve_bytes=60 * 10**9)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        kv_capacity_tokens(LLAMA_7B, H100, 1.5)


def test_build_paged_from_the_derived_capacity():
    kv = build_kv_manager(MemorySpec(), LLAMA_7B, H100)
    assert isinstance(kv, PagedKVManager)
    # 111,625 // 16 = 6,976 blocks; watermark ceil(0.01 * 6,976) = 70;
    # swap: 4e9 B / (16 * 524,288 B per block) = 476.8 -> 476 CPU blocks
    assert (kv.num_blocks, kv.block_size, kv.watermark_blocks, kv.num_cpu_blocks) == (6976, 16, 70, 476)


def test_build_with_sizes_given_directly():
    kv = build_kv_manager(MemorySpec(num_blocks=11, swap_space_gb=0), MODELS["llama-2-70b"], H100)
    assert (kv.num_blocks, kv.total_tokens, kv.num_cpu_blocks) == (11, 176, 0)  # no derivation
    kv = build_kv_manager(MemorySpec(num_tokens=100, block_size=32), LLAMA_7B, H100)
    assert (kv.num_blocks, kv.total_tokens) == (3, 96)
    kv = build_kv_manager(MemorySpec(layout="contiguous", reservation="pow2", num_tokens=1000),
                          MODELS["opt-13b"], H100)
    assert isinstance(kv, ContiguousKVManager)
    assert (kv.total_tokens, kv.reservation, kv.max_context_tokens) == (1000, "pow2", 2048)


def test_a_cache_smaller_than_one_block_is_refused():
    with pytest.raises(ValueError, match="holds no block of block_size=16"):
        build_kv_manager(MemorySpec(num_tokens=8), LLAMA_7B, H100)


@pytest.mark.parametrize("fields, message", [
    ({"block_size": 24}, "block_size must be a power of two in 1..256"),
    ({"block_size": 512}, "block_size must be a power of two in 1..256"),
    ({"layout": "ring"}, "layout"),
    ({"reservation": "fixed"}, "reservation"),
    ({"watermark": 1.0}, "watermark"),
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
    ({"num_blocks": 0}, "num_blocks"),
    ({"swap_space_gb": -1}, "swap_space_gb"),
    ({"blocks": 10}, "blocks"),
    ({"num_blocks": 10, "num_tokens": 160}, "give num_blocks or num_tokens, not both"),
    ({"layout": "contiguous", "num_blocks": 10}, "give a contiguous cache's size as num_tokens"),
])
def test_memory_spec_rejects_bad_fields(fields, message):
    with pytest.raises(ValidationError, match=message):
        MemorySpec(**fields)


def test_memory_spec_accepts_the_documented_example():
    spec = MemorySpec(layout="paged", block_size=16, watermark=0.01, reservation="max",
                      gpu_memory_utilization=0.9, num_blocks=None, num_tokens=None, swap_space_gb=4)
    assert spec == MemorySpec()
    assert MemorySpec(block_size=1).block_size == 1
