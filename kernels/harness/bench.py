"""Benchmark harness: decode (paged, contiguous, SDPA), prefill and cache-write
kernels on the GPU, against ceilings measured in the same run.

    python -m kernels.harness.bench [--quick] [--out DIR] [--sweep]

Writes ``decode.csv``, ``prefill.csv``, ``cache_write.csv`` and ``summary.md``
into ``--out`` (default ``kernels/results/<gpu>/``); ``--sweep`` instead times
tile/split variants of the target shapes into ``sweep.csv``. Timing is
``triton.testing.do_bench`` (CUDA events, median of many repeats); do_bench
clears the L2 cache (50 MB on an H100) before every repeat, so each launch
reads its inputs cold from HBM. Set ``PAGESIM_COMMIT`` to record the git
commit (the device copy may have no ``.git``).
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.outputs import check_out_dir, is_pagesim_dir, write_marker
from kernels.harness.bench_timing import device_info, gpu_slug, host_us, measure_ceilings, time_ms
from sim.presets import MODELS

# attention heads of the benchmarked models: (query heads, KV heads, head dim)
GEOMETRIES = {name: (MODELS[name].num_heads, MODELS[name].num_kv_heads, MODELS[name].head_dim)
              for name in ("llama-2-7b", "llama-3-8b")}
BATCHES = (1, 4, 16, 64, 256)
CONTEXTS = (512, 2048, 4096, 8192, 32768)
QUICK_BATCHES = (1, 16, 64)
QUICK_CONTEXTS = (512, 4096, 32768)
# Block sizes timed on every shape; the others on the SUBGRID shapes only.
MAIN_BLOCK_SIZES = (16, 32)
EXTRA_BLOCK_SIZES = (8, 64, 128)
SUBGRID = ((1, 4096), (1, 32768), (16, 4096), (64, 4096), (256, 2048))
HOST_SHAPES = ((1, 32768), (64, 4096))   # (batch, context) whose host time is also measured
MAX_KV_BYTES = 16 * 2**30   # K+V of one layout; larger shapes are skipped
PREFILL_SHAPES = ((1, 4096), (4, 2048), (16, 512), (1, 16384))
WRITE_TOKENS = (64, 256, 4096)
# (block_n, num_warps, num_stages) tried by --sweep
SWEEP_TILES = ((64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 3))
DEFAULT_TILES = ((64, 4, 3),)
# (geometry, batch, context, tiles tried, splits tried) for --sweep
SWEEP_PLANS = (("llama-3-8b", 64, 4096, SWEEP_TILES, (1, 2)),
               ("llama-3-8b", 1, 32768, SWEEP_TILES, (8, 16, 33, 66)),
               ("llama-3-8b", 1, 512, DEFAULT_TILES, (1, 2, 4, 8)),
               ("llama-3-8b", 1, 4096, DEFAULT_TILES, (4, 8, 16, 32, 64)),
               ("llama-3-8b", 4, 4096, DEFAULT_TILES, (4, 9, 17, 33)),
               ("llama-2-7b", 4, 32768, DEFAULT_TILES, (1, 2, 3, 5, 9)))


@dataclass(frozen=True)
class DecodeShape:
    geometry: str
    batch: int
    context: int

    @property
    def heads(self) -> tuple[int, int, int]:
        return GEOMETRIES[self.geometry]

    def kv_bytes(self, elt: int = 2) -> int:
        _, num_kv_heads, head_dim = self.heads
        return 2 * self.batch * self.context * num_kv_heads * head_dim * elt

    def bytes_moved(self, elt: int = 2) -> int:
        """K and V read once, Q read and O written once."""
        num_heads, _, head_dim = self.heads
        return self.kv_bytes(elt) + 2 * self.batch * num_heads * head_dim * elt


def decode_inputs(shape: DecodeShape, gen):
    """Random bf16 q and contiguous caches with every context full."""
    import torch

    num_heads, num_kv_heads, head_dim = shape.heads
    kw = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
    q = torch.randn(shape.batch, num_heads, head_dim, **kw)
    cache_shape = (shape.batch, shape.context, num_kv_heads, head_dim)
    k, v = torch.randn(*cache_shape, **kw), torch.randn(*cache_shape, **kw)
    lens = torch.full((shape.batch,), shape.context, dtype=torch.int32, device="cuda")
    return q, k, v, lens


def paged_copy(k, v, block_size: int, gen):
    """The same tokens in a paged pool whose blocks are shuffled: block i of the
    flattened contiguous cache lands at pool index ``perm[i]``."""
    import torch

    batch, context, num_kv_heads, head_dim = k.shape
    per_seq = context // block_size
    perm = torch.randperm(batch * per_seq, device="cuda", generator=gen)
    pools = []
    for src in (k, v):
        pool = torch.empty(batch * per_seq, block_size, num_kv_heads, head_dim,
                           dtype=src.dtype, device="cuda")
        pool[perm] = src.reshape(batch * per_seq, block_size, num_kv_heads, head_dim)
        pools.append(pool)
    tables = perm.view(batch, per_seq).to(torch.int32)
    return pools[0], pools[1], tables


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _row(shape: DecodeShape, kernel: str, block_size: int, splits, ms: float, check: float,
         ceilings: dict, host: float | None = None) -> dict:
    gbps = shape.bytes_moved() / ms / 1e6
    num_heads, num_kv_heads, head_dim = shape.heads
    return {"geometry": shape.geometry, "num_heads": num_heads, "num_kv_heads": num_kv_heads,
            "head_dim": head_dim, "batch": shape.batch, "context": shape.context,
            "kernel": kernel, "block_size": block_size, "num_splits": splits,
            "time_us": ms * 1e3, "bytes": shape.bytes_moved(), "gbps": gbps,
            "frac_copy_bw": gbps / ceilings["copy_gbps"], "check_rel_err": check,
            "host_us": host}


def bench_decode_shape(shape: DecodeShape, block_sizes, ceilings: dict, gen, log) -> list[dict]:
    """Contiguous, SDPA and paged (one row per block size) on the same tokens."""
    import torch.nn.functional as F

    from kernels.ops.decode_common import choose_num_splits, num_sms
    from kernels.ops.contiguous_decode import contiguous_decode_attention
    from kernels.ops.paged_decode import paged_decode_attention

    q, k, v, lens = decode_inputs(shape, gen)
    num_heads, num_kv_heads, _ = shape.heads
    out = q.clone()
    with_host = (shape.batch, shape.context) in HOST_SHAPES
    splits = choose_num_splits(shape.batch, num_kv_heads, shape.context, num_sms(q.device))
    contig_fn = lambda: contiguous_decode_attention(q, k, v, lens, out=out)
    contig = contig_fn().clone()
    q4, k4, v4 = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)
    sdpa = lambda: F.scaled_dot_product_attention(q4, k4, v4, enable_gqa=num_heads != num_kv_heads)
    rows = [_row(shape, "contiguous", 0, splits, time_ms(contig_fn), 0.0, ceilings,
                 host_us(contig_fn) if with_host else None),
            _row(shape, "sdpa", 0, 0, time_ms(sdpa), _rel(sdpa().squeeze(2), contig), ceilings)]
    for block_size in block_sizes:
        kp, vp, tables = paged_copy(k, v, block_size, gen)
        paged_fn = lambda: paged_decode_attention(q, kp, vp, tables, lens, out=out)
        check = _rel(paged_fn(), contig)
        rows.append(_row(shape, "paged", block_size, splits, time_ms(paged_fn), check, ceilings,
                         host_us(paged_fn) if with_host and block_size == 16 else None))
        del kp, vp, tables
    paged16 = next((r for r in rows if r["kernel"] == "paged" and r["block_size"] == 16), rows[-1])
    log(f"{shape.geometry:<11} B={shape.batch:<4} ctx={shape.context:<6} splits={splits:<3} "
        f"contig {rows[0]['time_us']:9.1f}us {rows[0]['frac_copy_bw']:5.1%}  paged16 "
        f"{paged16['time_us']:9.1f}us {paged16['frac_copy_bw']:5.1%}  "
        f"sdpa {rows[1]['time_us']:9.1f}us")
    return rows


def decode_shapes(quick: bool) -> list[DecodeShape]:
    batches, contexts = (QUICK_BATCHES, QUICK_CONTEXTS) if quick else (BATCHES, CONTEXTS)
    return [DecodeShape(g, b, c) for g in GEOMETRIES for b in batches for c in contexts]


def bench_decode(quick: bool, ceilings: dict, gen, log) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for shape in decode_shapes(quick):
        if shape.kv_bytes() > MAX_KV_BYTES:
            skipped.append(f"{shape.geometry} B={shape.batch} ctx={shape.context}: "
                           f"K+V {shape.kv_bytes() / 2**30:.0f} GiB > {MAX_KV_BYTES / 2**30:.0f} GiB")
            continue
        extra = EXTRA_BLOCK_SIZES if (shape.batch, shape.context) in SUBGRID and not quick else ()
        rows += bench_decode_shape(shape, MAIN_BLOCK_SIZES + extra, ceilings, gen, log)
    return rows, skipped


def bench_prefill(quick: bool, ceilings: dict, gen, log) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from kernels.ops.prefill import prefill_attention

    rows = []
    for geometry, (num_heads, num_kv_heads, head_dim) in GEOMETRIES.items():
        for batch, length in PREFILL_SHAPES[:2] if quick else PREFILL_SHAPES:
            kw = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
            total = batch * length
            q = torch.randn(total, num_heads, head_dim, **kw)
            k = torch.randn(total, num_kv_heads, head_dim, **kw)
            v = torch.randn(total, num_kv_heads, head_dim, **kw)
            cu = torch.arange(0, total + 1, length, dtype=torch.int32, device="cuda")
            ms = time_ms(lambda: prefill_attention(q, k, v, cu, length))
            qb, kb, vb = (t.view(batch, length, -1, head_dim).transpose(1, 2) for t in (q, k, v))
            sdpa = lambda: F.scaled_dot_product_attention(qb, kb, vb, is_causal=True,
                                                          enable_gqa=num_heads != num_kv_heads)
            sdpa_ms = time_ms(sdpa)
            check = _rel(prefill_attention(q, k, v, cu, length),
                         sdpa().transpose(1, 2).reshape(total, num_heads, head_dim))
            flops = 4 * batch * num_heads * head_dim * length * (length + 1) / 2
            tflops = flops / ms / 1e9
            rows.append({"geometry": geometry, "batch": batch, "length": length,
                         "time_us": ms * 1e3, "tflops": tflops,
                         "frac_matmul_peak": tflops / ceilings["matmul_tflops"],
                         "sdpa_time_us": sdpa_ms * 1e3, "sdpa_over_kernel": sdpa_ms / ms,
                         "check_rel_err": check})
            log(f"prefill {geometry:<11} {batch}x{length:<6} {ms * 1e3:9.1f}us "
                f"{tflops:6.1f} TFLOP/s  sdpa {sdpa_ms * 1e3:9.1f}us")
    return rows


def bench_cache_write(ceilings: dict, gen, log) -> list[dict]:
    import torch

    from kernels.ops.cache_write import write_paged_kv

    _, num_kv_heads, head_dim = GEOMETRIES["llama-3-8b"]
    rows = []
    for tokens in WRITE_TOKENS:
        kw = dict(device="cuda", dtype=torch.bfloat16)
        k = torch.randn(tokens, num_kv_heads, head_dim, generator=gen, **kw)
        v = torch.randn_like(k)
        pool_shape = (max(4096, tokens), 16, num_kv_heads, head_dim)
        kc, vc = torch.zeros(pool_shape, **kw), torch.zeros(pool_shape, **kw)
        slots = torch.randperm(kc.shape[0] * 16, device="cuda", generator=gen)[:tokens]
        # contiguous: one linear buffer seen as one-token pages, 256 sequences' ranges
        cc = torch.zeros(256 * max(1, -(-tokens // 256)), 1, num_kv_heads, head_dim, **kw)
        vcc = torch.zeros_like(cc)
        t = torch.arange(tokens, device="cuda")
        contig_slots = (t % 256) * (cc.shape[0] // 256) + t // 256
        nbytes = 2 * 2 * k.numel() * k.element_size()
        for layout, fn in (("paged", lambda: write_paged_kv(k, v, kc, vc, slots)),
                           ("contiguous", lambda: write_paged_kv(k, v, cc, vcc, contig_slots))):
            ms = time_ms(fn)
            rows.append({"layout": layout, "tokens": tokens, "num_kv_heads": num_kv_heads,
                         "head_dim": head_dim, "time_us": ms * 1e3, "bytes": nbytes,
                         "gbps": nbytes / ms / 1e6,
                         "frac_copy_bw": nbytes / ms / 1e6 / ceilings["copy_gbps"]})
            log(f"cache write {layout:<10} T={tokens:<5} {ms * 1e3:8.1f}us")
    return rows


def sweep(ceilings: dict, gen, log) -> list[dict]:
    """Tile and split variants (``SWEEP_PLANS``), both layouts, same tokens."""
    from kernels.ops.decode_common import DecodeTiles
    from kernels.ops.contiguous_decode import contiguous_decode_with_tiles
    from kernels.ops.paged_decode import paged_decode_with_tiles

    rows = []
    for geometry, batch, context, tile_options, split_options in SWEEP_PLANS:
        shape = DecodeShape(geometry, batch, context)
        q, k, v, lens = decode_inputs(shape, gen)
        kp, vp, tables = paged_copy(k, v, 16, gen)
        out = q.clone()
        for (block_n, warps, stages), splits in itertools.product(tile_options, split_options):
            tiles = DecodeTiles(block_n, warps, stages)
            for layout, fn in (
                ("paged", lambda: paged_decode_with_tiles(q, kp, vp, tables, lens, None, splits,
                                                          out, tiles)),
                ("contiguous", lambda: contiguous_decode_with_tiles(q, k, v, lens, None, splits,
                                                                    out, tiles)),
            ):
                row = _row(shape, layout, 16 if layout == "paged" else 0, splits, time_ms(fn),
                           0.0, ceilings)
                row.update(block_n=block_n, num_warps=warps, num_stages=stages)
                rows.append(row)
                log(f"sweep {geometry} B={batch} ctx={context} {layout:<10} n={block_n:<3} "
                    f"w={warps} s={stages} splits={splits:<3} {row['time_us']:8.1f}us "
                    f"{row['frac_copy_bw']:6.1%}")
        del q, k, v, kp, vp, tables
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m kernels.harness.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args.quick, args.out, args.sweep, argv)
    except ValueError as exc:
        print(f"kernels.harness.bench: error: {exc}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: kernels/results/<gpu>/)")
    parser.add_argument("--sweep", action="store_true",
                        help="time tile/split variants of the target shapes instead")


def _is_bench_dir(directory: Path) -> bool:
    """A directory this benchmark wrote: the marker, or (before markers) its summary."""
    summary = directory / "summary.md"
    if is_pagesim_dir(directory):
        return True
    try:
        return summary.is_file() and summary.read_text().startswith("# Kernel benchmark: ")
    except (OSError, UnicodeDecodeError):
        return False


def run(quick: bool, out: str | None, do_sweep: bool, argv: list[str], log=print) -> int:
    import torch

    from kernels.harness.bench_report import write_csv, write_summary

    if not torch.cuda.is_available():
        raise ValueError("no CUDA device is visible; the benchmark needs a GPU")
    info = device_info(argv)
    out_dir = Path(out) if out else Path(__file__).parent.parent / "results" / gpu_slug(info["gpu"])
    check_out_dir(out_dir, replace=False, ours=_is_bench_dir, can_force=False)   # never write over a user's files
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, "kernels bench")
    started = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    ceilings = measure_ceilings()
    log(f"{info['gpu']}: copy {ceilings['copy_gbps']:.0f} GB/s, "
        f"bf16 matmul {ceilings['matmul_tflops']:.0f} TFLOP/s")
    if do_sweep:
        write_csv(out_dir / "sweep.csv", sweep(ceilings, gen, log))
        return 0
    decode_rows, skipped = bench_decode(quick, ceilings, gen, log)
    write_csv(out_dir / "decode.csv", decode_rows)
    write_rows = bench_cache_write(ceilings, gen, log)
    write_csv(out_dir / "cache_write.csv", write_rows)
    prefill_rows, prefill_note = [], "skipped: kernels.ops.prefill not present"
    if importlib.util.find_spec("kernels.ops.prefill") is not None:
        prefill_rows, prefill_note = bench_prefill(quick, ceilings, gen, log), ""
        write_csv(out_dir / "prefill.csv", prefill_rows)
    info["wall_s"] = round(time.perf_counter() - started)
    write_summary(out_dir / "summary.md", info, ceilings, decode_rows, skipped, write_rows,
                  prefill_rows, prefill_note)
    log(f"wrote {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
