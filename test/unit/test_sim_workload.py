"""Workloads: Mooncake trace loading, rate scaling, synthetic generators."""

import json

import numpy as np
import pytest

from sglang_dcp.sim.workload import WORKLOADS, find_trace, load_trace, synthetic


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_load_trace_sorts_and_clamps(tmp_path):
    f = _write(tmp_path / "mooncake_tiny_trace.jsonl", [
        {"timestamp": 20, "input_length": 100, "output_length": 5, "hash_ids": [1]},
        {"timestamp": 0, "input_length": 50, "output_length": 0},
        {"timestamp": 10, "input_length": 70, "output_length": 3},
    ])
    w = load_trace(f)
    assert w.name == "tiny"
    assert w.arrival_ms.tolist() == [0, 10, 20]
    assert w.input_len.tolist() == [50, 70, 100]
    assert w.output_len.tolist() == [1, 3, 5]  # output 0 read as 1 (prefill emits a token)
    assert w.rate_rps == pytest.approx(3 / 0.020)


def test_load_trace_bad_row_names_the_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n{"timestamp": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*input_length"):
        load_trace(f)


def test_at_rate_scales_span_and_keeps_order():
    w = synthetic("tiny", seed=3)
    w2 = w.at_rate(w.rate_rps * 4)
    assert w2.rate_rps == pytest.approx(w.rate_rps * 4)
    assert w2.span_ms == pytest.approx(w.span_ms / 4)
    assert np.array_equal(w2.input_len, w.input_len)
    assert np.all(np.diff(w2.arrival_ms) >= 0)
    with pytest.raises(ValueError):
        w.at_rate(0)


def test_synthetic_is_seeded_and_long_tailed():
    a, b, c = synthetic("longtail", seed=1), synthetic("longtail", seed=1), synthetic("longtail", 2)
    assert np.array_equal(a.input_len, b.input_len) and np.array_equal(a.arrival_ms, b.arrival_ms)
    assert not np.array_equal(a.input_len, c.input_len)
    spec = WORKLOADS["longtail"]
    assert len(a) == spec.num_requests
    assert a.input_len.max() <= spec.max_input and a.output_len.min() >= 1
    assert np.mean(a.input_len >= spec.tail_min) > 0.15  # the Zipf tail is there
    assert np.median(a.input_len) < spec.tail_min  # and the body is short
    assert a.rate_rps == pytest.approx(spec.rate_rps, rel=0.15)


def test_synthetic_overrides_and_unknown_name():
    w = synthetic("chat", seed=0, num_requests=17)
    assert len(w) == 17
    with pytest.raises(KeyError, match="unknown workload"):
        synthetic("nope")


def test_find_trace_env_dir(tmp_path, monkeypatch):
    _write(tmp_path / "mooncake_synthetic_trace.jsonl",
           [{"timestamp": 0, "input_length": 1, "output_length": 1}])
    monkeypatch.setenv("SGLANG_DCP_TRACE_DIR", str(tmp_path))
    assert find_trace("synthetic") == tmp_path / "mooncake_synthetic_trace.jsonl"


@pytest.mark.parametrize("name,count", [("conversation", 12031), ("synthetic", 3993)])
def test_shared_mooncake_traces(name, count):
    path = find_trace(name)
    if path is None:
        pytest.skip(f"Mooncake {name} trace not found ($SGLANG_DCP_TRACE_DIR or ../shared/data)")
    w = load_trace(path)
    assert len(w) == count
    assert 1 < w.rate_rps < 10
