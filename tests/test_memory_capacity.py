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
    # memory: 81,559 MiB = 85,520,809,984 B (what the driver reports for an H100 SXM 80GB)
    # (85,520,809,984 * 0.9 - 13,476,298,752) / 524,288 = 63,492,430,233.6 / 524,288 = 121,102.2 -> 121,102
    assert H100.memory_bytes == 85_520_809_984
    assert LLAMA_7B.weight_bytes == 13_476_298_752
    assert LLAMA_7B.kv_bytes_per_token == 524_288
    assert kv_capacity_tokens(LLAMA_7B, H100, 0.9) == 121_102
    # a 1 GB activation reserve: 62,492,430,233.6 / 524,288 = 119,194.9 -> 119,194
    assert kv_capacity_tokens(LLAMA_7B, H100, 0.9, activation_reserve_bytes=10**9) == 119_194


def test_llama_3_8b_gqa_on_a100_40gb():
    # KV per token: 2 * 32 layers * 8 KV heads * 128 * 2 B = 131,072 B
    # (40,960 MiB = 42,949,672,960 B * 0.9 - 16,059,990,016) / 131,072 = 22,594,715,648 / 131,072 = 172,384
    assert kv_capacity_tokens(MODELS["llama-3-8b"], HARDWARE["a100-40gb"], 0.9) == 172_384


def test_opt_13b_on_a100_40gb_counts_its_tied_embedding_once():
    # per layer 4*5120^2 + 2*5120*20480 (ReLU MLP) = 314,572,800; * 40 = 12,582,912,000
    #   + 50272*5120 = 257,392,640 once (the LM head is the input embedding) = 12,840,304,640 params
    # KV per token: 2 * 40 * 5120 * 2 B = 819,200 B
    # (42,949,672,960 * 0.9 - 25,680,609,280) / 819,200 = 15,837.5 -> 15,837 (the vLLM paper's setup)
    opt = MODELS["opt-13b"]
    assert opt.tied_embeddings and opt.num_params == 12_840_304_640
    assert kv_capacity_tokens(opt, HARDWARE["a100-40gb"], 0.9) == 15_837


def test_weights_that_do_not_fit_give_a_clear_message():
    with pytest.raises(ValueError, match=r"^llama-2-70b weights need 138\.0 GB, h100-sxm has 77\.0 GB "
                                         r"at gpu_memory_utilization=0\.9"):
        kv_capacity_tokens(MODELS["llama-2-70b"], H100, 0.9)
    with pytest.raises(ValueError, match=r"\+ 70\.0 GB activation reserve"):
        kv_capacity_tokens(LLAMA_7B, H100, 0.9, activation_reserve_bytes=70 * 10**9)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        kv_capacity_tokens(LLAMA_7B, H100, 1.5)


def test_build_paged_from_the_derived_capacity():
    kv = build_kv_manager(MemorySpec(), LLAMA_7B, H100)
    assert isinstance(kv, PagedKVManager)
    # 121,102 // 16 = 7,568 blocks; watermark ceil(0.01 * 7,568) = 76;
    # swap: 4e9 B / (16 * 524,288 B per block) = 476.8 -> 476 CPU blocks
    assert (kv.num_blocks, kv.block_size, kv.watermark_blocks, kv.num_cpu_blocks) == (7568, 16, 76, 476)


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
