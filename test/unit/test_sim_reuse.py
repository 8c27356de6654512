"""``run_experiment(reuse=...)`` (``sim --reuse``, ``bench/sim.py --rerun``): only the listed
policies run; the others and the pooled bound are copied, and the result is what a full run
gives for the policies that ran (the simulator is deterministic)."""

from sglang_dcp.sim.engine import SimOptions
from sglang_dcp.sim.experiment import Experiment, run_experiment
from sglang_dcp.sim.search import SearchSpec
from sglang_dcp.sim.workload import make_workload


def _exp(policies):
    w = make_workload("bimodal", seed=3, num_requests=120)
    return Experiment(w, 4, "qwen3-235b-h200", policies, SearchSpec(50.0, 2000.0, 0.05, 6),
                      SimOptions(), kv_capacity=200_000)


def test_reuse_copies_the_other_policies_and_reproduces_the_rerun_one():
    full, _ = run_experiment(_exp(("total_tokens", "uniform", "dcp")))
    again, runs = run_experiment(_exp(("dcp",)), reuse=full)
    assert set(runs) == {"dcp"}
    assert again["reused"]["policies"] == ["total_tokens", "uniform"]
    assert again["reused"]["pooled_bound"] is True
    for n in ("total_tokens", "uniform", "dcp"):
        assert again["policies"][n] == full["policies"][n]
        assert again["search"]["precision"][n] == full["search"]["precision"][n]
    assert again["reference"] == full["reference"]
    assert again["ratios"] == full["ratios"]
    assert again["pooled_bound"]["rate_rps"] == full["pooled_bound"]["rate_rps"]


def test_chat_agentic_mix_is_half_chat_half_claude():
    import numpy as np

    w = make_workload("chat-agentic", seed=5, num_requests=20_000)
    chat = w.input_len < 8 * 1024  # the chat bin [256, 8k) plus appended tokens, mostly below
    assert 0.42 < chat.mean() < 0.52
    for edge, share in zip((64, 128, 256), (0.724, 0.485, 0.237)):  # agentic-claude, halved
        got = float(np.mean(w.input_len > edge * 1024))
        assert share / 2 - 0.01 <= got <= share / 2 + 0.03, (edge, got)


def test_heldout_regimes_are_new_and_well_formed():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import sim

    held, matrix = sim.heldout(), sim.scenarios()
    assert len({s.id for s in held}) == len(held)
    def key(s):
        return s.workload, s.deployment.ranks, s.deployment.profile, s.slo_ms, s.kv_capacity

    seen = {key(s) for s in matrix}
    chosen = held[:len(sim.HELDOUT)]
    assert not any(key(s) in seen for s in chosen)  # new regimes, not only new seeds
    # the drawn ones are random: a matrix regime may come back, with another seed
    assert sim.drawn_heldout() == sim.drawn_heldout()
    assert len(held) == len(chosen) + sim.DRAWN + sim.DRAWN2 + sim.DRAWN3  # three draws
    assert sim.drawn_heldout(sim.DRAWN2, sim.DRAWN2_SEED)[:1] != sim.drawn_heldout()[:1]
    assert sim.drawn_heldout(seed=1) != sim.drawn_heldout()
    for s in held:
        assert s.seed != 0 and 8 <= s.deployment.ranks <= 32 and 35 <= s.slo_ms <= 50
        assert s.kv_capacity is None or 300_000 <= s.kv_capacity <= 900_000
        f = s.flags()
        assert f[f.index("--seed") + 1] == str(s.seed) and "sim-heldout" in f[-1]
