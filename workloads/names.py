"""Names the CLI offers before anything heavy is imported: the traces shipped
inside the package (``workloads/data/``, sources in its README) and the trace
formats. ``workloads.trace_formats`` holds what each format means;
``tests/test_workloads_traces.py`` keeps the two in step."""

EMBEDDED_TRACES: dict[str, str] = {
    "azure_conv_2023": "azure_conv_2023.csv",
    "azure_code_2023": "azure_code_2023.csv",
    "mooncake_conversation": "mooncake_conversation.jsonl.gz",
}

TABULAR_FORMATS = ("processed", "azure", "burstgpt")
"""CSV formats known by their columns (``trace_formats.TRACE_FORMATS``)."""

HASHED_FORMATS = ("mooncake", "qwen")
"""JSON-lines formats with prompt block hashes (``trace_formats.HASHED_FORMATS``)."""

FORMAT_NAMES = ("auto", *TABULAR_FORMATS, *HASHED_FORMATS, "csv")
