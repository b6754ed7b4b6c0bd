"""pagesim's Triton kernels -- paged and contiguous decode attention, prefill
attention, KV-cache writes -- and their plain torch references
(``kernels.ops.reference``)."""
