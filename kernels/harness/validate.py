"""Validation harness: every kernel against its torch reference over a grid of
hard cases, with a pass/fail table and a non-zero exit on any failure.

    python -m kernels.harness.validate [--device cuda|cpu] [--quick]

``--device cpu`` runs the kernels under the Triton interpreter
(``TRITON_INTERPRET=1``, fp32/fp16, small shapes). Every case draws fresh
random inputs, fills free cache blocks, unused slots of partial blocks and the
contiguous tail with NaN, points unused block-table entries at a NaN block,
and poisons the output with NaN before each launch: a NaN in the result means
an unwritten output or a read of memory the kernel must not touch. The error
is ``||out - ref|| / ||ref||`` per case, against ``TOLERANCE`` for its dtype.
Decode cases also check split-K invariance: the output with ``n`` splits
against the output with one split. The grid lives in ``kernels/harness/validate_cases.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

# ||out - ref|| / ||ref|| allowed per dtype. fp32: exact-ish math (the
# interpreter, or IEEE dots on the GPU). fp16 / bf16: output rounding
# (2**-11 / 2**-8 relative) plus the probabilities rounded to the value dtype
# before the P @ V product.
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}


@dataclass(frozen=True)
class CaseResult:
    kernel: str
    case: str
    dtype: str
    variant: str
    rel_err: float
    tol: float
    nan_count: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.note.startswith("ERROR") and self.nan_count == 0 and self.rel_err <= self.tol


def relative_error(out, ref) -> float:
    ref64, out64 = ref.double(), out.double()
    denom = ref64.norm().item()
    diff = (out64 - ref64).nan_to_num(nan=float("inf")).norm().item()
    return diff / denom if denom > 0 else diff


def interpreter_loop_bounds_patch():
    """A replacement for the interpreter's tensor patcher that squeezes scalar
    tensors before ``int()``: triton 3.6's interpreter passes a 1-element array
    to ``int()`` for runtime loop bounds, which numpy >= 2.4 refuses. Returns
    ``None`` when nothing needs patching (already patched)."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "squeezes_index", False):
        return None

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.squeezes_index = True
    return patched


def _poisoned_out(like):
    import torch

    return torch.full_like(like, float("nan"))


def check_decode(case, device: str, seed: int) -> list[CaseResult]:
    from kernels.ops.contiguous_decode import contiguous_decode_attention
    from kernels.ops.paged_decode import paged_decode_attention
    from kernels.ops.reference import paged_decode_ref
    from kernels.harness.validate_cases import build_decode_inputs

    x = build_decode_inputs(case, seed, device)
    ref = paged_decode_ref(x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens)
    tol = TOLERANCE[case.dtype]
    results = []
    for kernel, run in (
        ("paged_decode", lambda out, s: paged_decode_attention(
            x.q, x.k_pool, x.v_pool, x.block_tables, x.context_lens, num_splits=s, out=out)),
        ("contiguous_decode", lambda out, s: contiguous_decode_attention(
            x.q, x.k_contig, x.v_contig, x.context_lens, num_splits=s, out=out)),
    ):
        one_split = run(_poisoned_out(x.q), 1)
        for splits in case.splits:
            out = run(_poisoned_out(x.q), splits)
            variant = f"splits={'auto' if splits is None else splits}"
            results.append(CaseResult(kernel, case.label, case.dtype, variant,
                                      relative_error(out, ref), tol,
                                      int(out.isnan().sum()), case.detail))
            if splits != 1:
                results.append(CaseResult(kernel, case.label, case.dtype,
                                          f"{variant} vs splits=1",
                                          relative_error(out, one_split), tol, 0,
                                          "split-K invariance"))
    return results


def check_cache_write(case, device: str, seed: int) -> list[CaseResult]:
    from kernels.ops.cache_write import write_paged_kv
    from kernels.ops.reference import write_paged_ref
    from kernels.harness.validate_cases import build_write_inputs

    x = build_write_inputs(case, seed, device)
    results = []
    for kernel, caches, run, run_ref in (
        ("write_paged_kv", (x.k_pool, x.v_pool),
         lambda kc, vc: write_paged_kv(x.k, x.v, kc, vc, x.slot_mapping),
         lambda kc, vc: write_paged_ref(x.k, x.v, kc, vc, x.slot_mapping)),
        ("write_paged_kv contiguous", (x.k_contig, x.v_contig),
         lambda kc, vc: write_paged_kv(x.k, x.v, kc, vc, x.contig_slots),
         lambda kc, vc: write_paged_ref(x.k, x.v, kc, vc, x.contig_slots)),
    ):
        got = [c.clone() for c in caches]
        want = [c.clone() for c in caches]
        run(*got)
        run_ref(*want)
        mismatches = sum(int((~((g == w) | (g.isnan() & w.isnan()))).sum())
                         for g, w in zip(got, want))
        written = [g[~w.isnan()] for g, w in zip(got, want)]
        nan_in_written = sum(int(t.isnan().sum()) for t in written)
        results.append(CaseResult(kernel, case.label, case.dtype, f"tokens={x.k.shape[0]}",
                                  float(mismatches), 0.0, nan_in_written,
                                  "exact match; skipped slots stay NaN"))
    return results


def check_prefill(case, device: str, seed: int) -> list[CaseResult]:
    from kernels.ops.prefill import prefill_attention
    from kernels.ops.reference import prefill_ref
    from kernels.harness.validate_cases import build_prefill_inputs

    x = build_prefill_inputs(case, seed, device)
    ref = prefill_ref(x.q, x.k, x.v, x.cu_seqlens, None, x.k_cache, x.v_cache,
                      x.block_tables, x.context_lens)
    out = _poisoned_out(x.q)
    prefill_attention(x.q, x.k, x.v, x.cu_seqlens, x.max_seqlen, None, x.k_cache, x.v_cache,
                      x.block_tables, x.context_lens, out=out)
    return [CaseResult("prefill", case.label, case.dtype, case.variant,
                       relative_error(out, ref), TOLERANCE[case.dtype],
                       int(out.isnan().sum()), case.detail)]


def _run_guarded(check, case, device: str, seed: int, kernel: str) -> list[CaseResult]:
    """One case; an exception becomes a failing row instead of ending the run."""
    try:
        return check(case, device, seed)
    except Exception as exc:  # noqa: BLE001 - reported as a failed case
        message = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        return [CaseResult(kernel, case.label, case.dtype, "-", float("nan"),
                           TOLERANCE.get(case.dtype, 0.0), 0, message)]


def run_all(device: str, quick: bool, log=print) -> tuple[list[CaseResult], list[str]]:
    """Run every check; returns the results and notes (e.g. skipped kernels)."""
    import importlib.util

    from kernels.harness import validate_cases

    results: list[CaseResult] = []
    notes: list[str] = []
    plan = [("decode", check_decode, validate_cases.decode_cases(device, quick)),
            ("cache_write", check_cache_write, validate_cases.write_cases(device, quick))]
    if importlib.util.find_spec("kernels.ops.prefill") is None:
        notes.append("prefill: skipped: kernels.ops.prefill not present")
    else:
        plan.append(("prefill", check_prefill, validate_cases.prefill_cases(device, quick)))
    for seed, (kernel, check, case) in enumerate(
            (k, c, case) for k, c, cases in plan for case in cases):
        started = time.perf_counter()
        rows = _run_guarded(check, case, device, seed, kernel)
        results.extend(rows)
        worst = max((r.rel_err for r in rows), default=0.0)
        status = "ok" if all(r.ok for r in rows) else "FAIL"
        log(f"[{status:>4}] {kernel:<12} {case.label:<28} {case.dtype:<9} "
            f"worst={worst:.2e} {time.perf_counter() - started:6.1f}s")
    return results, notes


def format_table(results: list[CaseResult]) -> str:
    header = f"{'status':<6} {'kernel':<20} {'case':<28} {'dtype':<9} {'variant':<26} " \
             f"{'rel_err':>9} {'tol':>8} {'NaN':>5}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{'PASS' if r.ok else 'FAIL':<6} {r.kernel:<20} {r.case:<28} {r.dtype:<9} "
                     f"{r.variant:<26} {r.rel_err:>9.2e} {r.tol:>8.1e} {r.nan_count:>5}  {r.note}")
    return "\n".join(lines)


def _prepare_device(device: str) -> None:
    """Select the interpreter before triton is imported; check CUDA is there."""
    if device == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("--device cpu: triton was imported before TRITON_INTERPRET=1 "
                             "could be set; run `python -m kernels.harness.validate --device cpu`")
        os.environ["TRITON_INTERPRET"] = "1"
        from triton.runtime import interpreter

        patched = interpreter_loop_bounds_patch()
        if patched is not None:
            interpreter._patch_lang_tensor = patched
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu "
                         "to run the kernels under the Triton interpreter")


def validate(device: str, quick: bool) -> int:
    """Run the harness, print the table; 0 if every case passed, else 1."""
    _prepare_device(device)
    started = time.perf_counter()
    results, notes = run_all(device, quick)
    print()
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    for note in notes:
        print(note)
    print(f"{len(results) - len(failed)}/{len(results)} checks passed on {device} "
          f"({'quick' if quick else 'full'} grid) in {time.perf_counter() - started:.0f}s")
    return 1 if failed else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: full-size cases on the GPU; cpu: small cases under "
                             "the Triton interpreter (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="a smaller grid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.harness.validate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return validate(args.device, args.quick)
    except ValueError as exc:
        print(f"kernels.harness.validate: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
