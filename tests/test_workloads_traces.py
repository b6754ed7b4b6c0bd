"""Trace loaders: every format on tiny files, filters with exact rows, row-precise errors."""
import re
import numpy as np
import pytest

from workloads.trace_formats import TraceColumns, TraceError
from workloads.traces import load_trace

PROCESSED = """arrived_at,num_prefill_tokens,num_decode_tokens
0.0,100,10
1.5,200,20
3.0,300,30
4.0,400,40
6.0,500,50
"""

AZURE_RAW = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:47.1805900,396,109
2023-11-16 18:15:50.0000000,879,55
"""

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,0,1087,Conversation log
118,GPT-4,417,276,693,API log
"""


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_processed_format_loads_exactly(tmp_path):
    loaded = load_trace(write(tmp_path, PROCESSED))
    assert loaded.format == "processed"
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 1.5, 3.0, 4.0, 6.0])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [100, 200, 300, 400, 500])
    np.testing.assert_array_equal(loaded.workload.output_tokens, [10, 20, 30, 40, 50])
    assert loaded.workload.name == "trace"
    assert loaded.num_rows == 5 and loaded.num_zero_tokens == 0


def test_raw_azure_timestamps_with_seven_fractional_digits(tmp_path):
    loaded = load_trace(write(tmp_path, AZURE_RAW))
    assert loaded.format == "azure"
    np.testing.assert_allclose(loaded.workload.arrival_s, [0.0, 0.5, 3.31941], atol=1e-6)
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [374, 396, 879])
    np.testing.assert_array_equal(loaded.workload.output_tokens, [44, 109, 55])


def test_burstgpt_drops_and_counts_failed_requests(tmp_path):
    loaded = load_trace(write(tmp_path, BURSTGPT))
    assert loaded.format == "burstgpt"
    assert loaded.num_rows == 3 and loaded.num_zero_tokens == 1
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 113.0])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [472, 417])
    np.testing.assert_array_equal(loaded.workload.output_tokens, [18, 276])


def test_csv_with_column_mapping_in_milliseconds(tmp_path):
    path = write(tmp_path, "t_ms,in,out,extra\n1000,5,6,x\n1250,7,8,y\n")
    loaded = load_trace(path, format="csv", columns=TraceColumns("t_ms", "in", "out", time_unit="ms"))
    np.testing.assert_allclose(loaded.workload.arrival_s, [0.0, 0.25])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [5, 7])
    np.testing.assert_array_equal(loaded.workload.output_tokens, [6, 8])


def test_window_is_relative_to_the_first_row_and_rebased(tmp_path):
    loaded = load_trace(write(tmp_path, PROCESSED), start_s=1.5, end_s=6.0)
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 1.5, 2.5])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [200, 300, 400])
    assert loaded.num_outside_window == 2


def test_limit_keeps_the_first_rows_after_the_other_filters(tmp_path):
    loaded = load_trace(write(tmp_path, PROCESSED), start_s=1.0, max_context_tokens=440, limit=2)
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 1.5])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [200, 300])
    assert (loaded.num_outside_window, loaded.num_over_context, loaded.num_over_limit) == (1, 1, 1)


def test_max_context_drops_and_counts_long_requests(tmp_path):
    loaded = load_trace(write(tmp_path, PROCESSED), max_context_tokens=330)
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [100, 200, 300])
    assert loaded.num_over_context == 2
    assert "2 over the context limit dropped" in loaded.describe()


def test_time_scale_multiplies_arrivals(tmp_path):
    loaded = load_trace(write(tmp_path, PROCESSED), time_scale=0.5)
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 0.75, 1.5, 2.0, 3.0])


def test_unsorted_rows_are_sorted_stably_and_counted(tmp_path):
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n2,1,1\n1,2,2\n1,3,3\n0,4,4\n"
    loaded = load_trace(write(tmp_path, text))
    np.testing.assert_array_equal(loaded.workload.arrival_s, [0.0, 1.0, 1.0, 2.0])
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [4, 2, 3, 1])
    assert loaded.num_out_of_order == 2


def test_embedded_azure_conversation_trace_loads_by_name():
    loaded = load_trace("azure_conv_2023", limit=3)
    assert loaded.num_rows == 19_366
    assert loaded.workload.name == "azure_conv_2023"
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [374, 396, 879])
    np.testing.assert_allclose(loaded.workload.arrival_s, [0.0, 4.314579, 4.541877])


def test_embedded_azure_code_trace_is_the_raw_azure_file():
    loaded = load_trace("azure_code_2023", limit=2)
    assert (loaded.format, loaded.num_rows) == ("azure", 8_819)
    np.testing.assert_array_equal(loaded.workload.prompt_tokens, [4808, 3180])
    np.testing.assert_allclose(loaded.workload.arrival_s, [0.0, 0.052])


def test_embedded_mooncake_trace_is_read_through_gzip():
    loaded = load_trace("mooncake_conversation", limit=2)
    assert (loaded.format, loaded.num_rows) == ("mooncake", 12_031)
    assert loaded.workload.prompt_tokens.tolist() == [6758, 7322]
    first, second = loaded.workload.segments
    assert first[0] == second[0] == (0, 512)        # both open with hash id 0: a shared first block
    assert first[13] == (13, 6758 - 13 * 512)


def test_any_trace_may_be_gzip_compressed_and_a_broken_one_is_named(tmp_path):
    import gzip

    plain = write(tmp_path, PROCESSED)
    packed = tmp_path / "trace.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = load_trace(plain).workload, load_trace(packed).workload
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"timestamp": 1}\n' * 50)[:30])
    with pytest.raises(TraceError, match="not a readable gzip file"):
        load_trace(broken)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value) == f"{path}: no such trace file"


@pytest.mark.parametrize("body, message", [
    ("0,1,1\n1.0,,5\n", "row 2: missing num_prefill_tokens"),
    ("0,1,1\n1.0,abc,5\n", "row 2: num_prefill_tokens is not a finite number: 'abc'"),
    ("0,1,1\n1,2,3\n2,4,-5\n", "row 3: num_decode_tokens must be a whole number >= 0, got '-5'"),
    ("0,1,1\n1,2.5,3\n", "row 2: num_prefill_tokens must be a whole number >= 0, got '2.5'"),
    ("-1,1,1\n", "row 1: arrived_at is negative: '-1'"),
    ("0,1,1\nnan,1,1\n", "row 2: arrived_at is not a finite number: 'nan'"),
    ("0,1,1\n1,2\n", "row 2: missing num_decode_tokens"),
    ("0,1,1\n\n2,1,1\n", "row 2: missing arrived_at"),
    ("0,1,1\n1,2,3,4\n", "row 2: expected 3 fields, saw 4"),
    ("0,1,1\n1,2,x\n2,y,3\n", "row 2: num_decode_tokens is not a finite number: 'x'"),
])
def test_malformed_rows_name_file_and_row(tmp_path, body, message):
    path = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n" + body)
    with pytest.raises(TraceError) as error:
        load_trace(path)
    assert str(error.value) == f"{path}: {message}"


def test_bad_azure_timestamp_names_the_row(tmp_path):
    path = write(tmp_path, AZURE_RAW + "yesterday,1,1\n")
    with pytest.raises(TraceError, match=r": row 4: TIMESTAMP is not a date-time") as error:
        load_trace(path)
    assert str(error.value).startswith(f"{path}: row 4:")


def test_unknown_header_asks_for_csv_format(tmp_path):
    path = write(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match="cannot tell the trace format .* use format 'csv'"):
        load_trace(path)


def test_explicit_format_needs_its_columns(tmp_path):
    path = write(tmp_path, PROCESSED)
    with pytest.raises(TraceError, match=r"header has no column 'TIMESTAMP'"):
        load_trace(path, format="azure")


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(TraceError, match="empty file"):
        load_trace(write(tmp_path, "", "empty.csv"))
    with pytest.raises(TraceError, match="no requests left"):
        load_trace(write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n", "header.csv"))


def test_filters_that_remove_everything_are_an_error(tmp_path):
    with pytest.raises(TraceError, match="no requests left"):
        load_trace(write(tmp_path, PROCESSED), start_s=100.0)


@pytest.mark.parametrize("options, message", [
    ({"format": "json"}, "unknown trace format 'json'; allowed: auto, processed, azure, burstgpt, mooncake, qwen, csv"),
    ({"format": "csv"}, "needs a column mapping"),
    ({"columns": TraceColumns("a", "b", "c")}, "only used with format 'csv'"),
    ({"start_s": 5.0, "end_s": 5.0}, "end_s must be > start_s"),
    ({"limit": 0}, "limit must be >= 1"),
    ({"time_scale": -1.0}, "time_scale must be"),
])
def test_bad_options_are_rejected(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        load_trace(write(tmp_path, PROCESSED), **options)


def _mooncake(tmp_path, rows, name="mc.jsonl"):
    import json

    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_mooncake_hash_ids_become_prompt_segments_of_512_tokens(tmp_path):
    from workloads.stats import prefix_reuse

    path = _mooncake(tmp_path, [
        {"timestamp": 2000, "input_length": 1100, "output_length": 7, "hash_ids": [5, 6, 9]},
        {"timestamp": 500, "input_length": 600, "output_length": 3, "hash_ids": [5, 8]},
    ])
    w = load_trace(path).workload                              # auto: JSON lines
    assert w.arrival_s.tolist() == [0.0, 1.5]                  # ms, sorted, from the first row
    # answers get ids -2, -3, ... in file order (never -1, which Python hashes like -2)
    assert w.segments == (((5, 512), (8, 88), (-3, 3)), ((5, 512), (6, 512), (9, 76), (-2, 7)))
    # the second request can reuse the first's 512-token block 5 of its 1100 prompt tokens
    assert prefix_reuse(w) == pytest.approx(512 / 1700)


@pytest.mark.parametrize("row,words", [
    ('{"timestamp": 1, "input_length": 10, "output_length": 2}', "row 1: missing 'hash_ids'"),
    ('{"timestamp": 1, "input_length": 1000, "output_length": 2, "hash_ids": [1]}',
     "row 1: 1000 input tokens need 2 hash ids of 512 tokens, got 1"),
    ('{"timestamp": -1, "input_length": 10, "output_length": 2, "hash_ids": [1]}', "row 1: timestamp must be"),
    ('{"timestamp": 1, "input_length": 10.5, "output_length": 2, "hash_ids": [1]}', "row 1: input_length must be"),
    ('{"timestamp": 1, "input_length": 10, "output_length": 2, "hash_ids": ["a"]}',
     "row 1: hash_ids must be a list of integers"),
    ('{"timestamp": 1, "input_length": 10', "row 1: not a JSON object"),
])
def test_bad_mooncake_rows_are_named(tmp_path, row, words):
    with pytest.raises(TraceError, match=re.escape(words)):
        load_trace(_mooncake(tmp_path, [row]), format="mooncake")


def test_qwen_rows_are_told_apart_by_chat_id_and_hash_16_token_blocks(tmp_path):
    path = _mooncake(tmp_path, [
        {"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.5, "input_length": 20, "output_length": 4,
         "type": "text", "turn": 1, "hash_ids": [7, 8]},
        {"chat_id": 2, "parent_chat_id": 1, "timestamp": 2.0, "input_length": 40, "output_length": 3,
         "type": "text", "turn": 2, "hash_ids": [7, 8, 9]},
    ], name="qwen.jsonl")
    load = load_trace(path)
    assert load.format == "qwen" and load.workload.arrival_s.tolist() == [0.0, 1.5]
    assert load.workload.segments[1][:3] == ((7, 16), (8, 16), (9, 8))


def test_the_cli_names_match_the_formats_and_the_packaged_traces():
    from importlib import resources

    from workloads import names, trace_formats

    assert names.TABULAR_FORMATS == tuple(trace_formats.TRACE_FORMATS)
    assert names.HASHED_FORMATS == tuple(trace_formats.HASHED_FORMATS)
    for file in names.EMBEDDED_TRACES.values():
        assert (resources.files("workloads") / "data" / file).is_file()
