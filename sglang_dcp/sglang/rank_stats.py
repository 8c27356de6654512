"""What one scheduler (one DP rank) reports about its DCP work: the numbers behind `/v1/loads`'s
``dcp`` section and the Prometheus gauges.

Pure Python, no SGLang import. The data path (``sglang_dcp.sglang.datapath``) updates the
process's ``RankStats`` (``context.stats()``, held by ``context.RankContext``); observers only read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(slots=True)
class RankStats:
    """Counters of one scheduler process (one DP rank). Gauges are "now", counters only grow."""

    dp_rank: int = -1
    # gauges
    guest_kv_tokens: int = 0  # KV slots held here for requests homed on other ranks
    guest_requests: int = 0  # requests with at least one shard here, homed elsewhere
    home_dcp_requests: int = 0  # requests homed here whose KV spans > 1 rank (running)
    guest_items_last_step: int = 0  # guest attention items served in the last active step
    # the planner's books for this rank (the DP controller's view, ledger.py)
    planner_kv_tokens: int = 0  # reserved: prompt + max_new_tokens of requests homed here, guests
    planner_guest_kv_tokens: int = 0  # sealed KV it believes this rank holds for other ranks
    piece_kv_tokens: int = 0  # cached pieces of finished split requests (piece_cache.py)
    planner_piece_kv_tokens: int = 0  # the controller's piece directory for this rank
    pieces_evicted: int = 0  # counter: cached pieces freed for room (LRU) or dropped unused
    exchange_ms_last_step: float = 0.0  # wall time in the exchange, summed over layers
    # counters
    active_steps: int = 0  # steps in which this rank joined the exchange
    exchange_ms_total: float = 0.0
    moves_done: int = 0  # shard moves this rank took part in (as sender or receiver)
    moves_failed: int = 0
    moved_tokens: int = 0  # tokens received as guest shards
    migrations_done: int = 0  # moves of requests homed here while they decoded (migration.py)
    degree_count: dict[int, int] = field(default_factory=dict)  # homed placements by degree
    # the static exchange (backend.py): rows of split requests / of unsplit ones (0 by
    # construction: unsplit rows keep SGLang's attention), steps run eagerly in rounds
    exchange_rows_split: int = 0
    exchange_rows_unsplit: int = 0
    exchange_eager_steps: int = 0
    exchange_node_steps: int = 0  # steps whose exchange ran within this rank's node only
    exchange_capacity: int = 0  # per-peer guest items per round the buffers hold
    guest_capacity_high_water: int = 0  # most queries one rank sent one peer in a step
    # prefill into shards (backend_extend.py): KV tokens read per layer by the tile exchange's
    # kernels (home and guest tiles), what reading each span once would take, and what the old
    # one-item-per-row route read (extend_tiles.TileRoute.kv_reads), summed over steps
    prefill_kv_reads_tiles: int = 0
    prefill_kv_reads_ideal: int = 0
    prefill_kv_reads_per_row: int = 0
    # the step header (header.py): scheduler iterations it ran, and those that needed its one
    # extra collective (an all-gather of news; every other iteration rides on SGLang's sync)
    header_steps: int = 0
    header_gathers: int = 0
    # header steps with KV work (guest frees, shard moves) that first waited for the forward in
    # flight (overlap.py; with overlap scheduling on, the only steps that give up overlap)
    header_forward_waits: int = 0

    def count_degree(self, degree: int) -> None:
        self.degree_count[degree] = self.degree_count.get(degree, 0) + 1

    def to_json(self) -> dict:
        d = asdict(self)
        d["degree_count"] = {str(k): v for k, v in sorted(self.degree_count.items())}
        return d
