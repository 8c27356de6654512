"""A request placed on cached pieces adopts them (sglang/piece_adopt.py, issue 26 parts 3-4):
every rank agrees on the run of pieces still held from token 0 (one all-gather), guests turn
theirs into guest KV, the home gets the adopted prefix row, and a piece evicted between
placement and use ends the run (the rest is recomputed; pieces past it are freed)."""

from sglang_dcp.exchange.spawn import run_ranks

from _piece_workers import adopt_worker


def test_ranks_agree_on_the_run_of_pieces_held():
    run_ranks(adopt_worker, 3, timeout_s=180)  # all held; a guest's, the first, the home's lost


def test_an_adoption_whose_request_ended_unprefilled_is_given_back():
    from _piece_workers import reap_check

    reap_check()
