"""KV shard transfer between two gloo ranks: success, batches, and failures that keep the source."""

from sglang_dcp.exchange.spawn import run_ranks

from _workers import transfer_worker


def test_transfer_and_faults():
    run_ranks(transfer_worker, 2, timeout_s=120)


def test_moves_larger_than_the_chunk_go_in_pieces():
    from _workers import chunked_transfer_worker

    run_ranks(chunked_transfer_worker, 2, timeout_s=120)
