"""The training stream as pure index arithmetic (NumPy only: no Ray, no torch).

The corpus is a sequence of documents in a fixed order (files sorted, records in file order), each known by its
position in that order, its token count and a key (a hash of its text). From these alone:

    units      every document long enough for a sample is one unit; shorter ones are joined with EOS, in corpus
               order and across the whole corpus, until long enough (or skipped, with method.short_docs=skip).
               Only the short documents after the last complete pack are lost, and they are counted.
    epoch e    a permutation of the units keyed by (seed, e) (or corpus order without shuffling); the draws of
               random anchors and PoSE skips are keyed by (unit key, seed, e), so every epoch draws new ones.
    position   the global sample stream is epoch 0's units, then epoch 1's, ...: position p is unit
               order_e[p mod N] of epoch e = p div N, for N units per epoch.
    step       an optimizer step takes a contiguous block of micro_batch x grad_accum x world positions and
               worker r of `world` takes the r-th slice of it, micro-batch after micro-batch. Under sequence
               parallelism `world` counts data-parallel groups: the N workers of a group share its slice.

Nothing here depends on how a data system cuts the corpus into blocks or batches, or on the number of workers or
CPUs, so a run resumed at any world size continues at the first position not yet trained on: a checkpoint needs to
record only how many samples have been consumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from endprompt_ray.method.anchoring import mix64

ORDER_SALT = 0xD1B54A32D192ED03  # keeps the shuffle's hash apart from the anchors' draws


@dataclass(frozen=True)
class Units:
    """The samples of one epoch, in corpus order: unit u is made of documents members[offsets[u]:offsets[u+1]]."""

    members: np.ndarray  # document positions in the corpus, unit after unit
    offsets: np.ndarray  # [num_units + 1]
    keys: np.ndarray  # uint64 identity of each unit: its document's key, or a pack's combined keys
    counts: dict = field(default_factory=dict)  # samples, packs, skipped_short, dropped_pack_remainder

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def documents_of(self, unit: int) -> np.ndarray:
        return self.members[self.offsets[unit]:self.offsets[unit + 1]]


def plan_units(lengths: np.ndarray, keys: np.ndarray, need: int, pack: bool = True) -> Units:
    """Units from the documents' token counts (`need`: tokens a sample needs, `AnchorSpec.min_document_tokens`).

    Packing is greedy over the short documents in corpus order, exactly as `anchoring.pack_short_documents` over the
    whole corpus at once: a pack closes once its documents and the EOS between them reach `need` tokens, and takes
    its place in the order where it closes. Documents without tokens are ignored.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    if len(lengths) != len(keys):
        raise ValueError(f"{len(lengths)} lengths for {len(keys)} keys")
    long_docs = np.flatnonzero(lengths >= need)
    short = np.flatnonzero((lengths > 0) & (lengths < need))
    bounds = [0]
    if pack and len(short):
        joined = np.concatenate([[0], np.cumsum(lengths[short] + 1)])  # tokens of short[:j] with one EOS each
        while True:  # one searchsorted per pack, not one step per document
            end = int(np.searchsorted(joined, joined[bounds[-1]] + need + 1, side="left"))
            if end >= len(joined):
                break
            bounds.append(end)
    bounds = np.asarray(bounds, dtype=np.int64)
    sizes = np.diff(bounds)
    closing = short[bounds[1:] - 1]  # the document at which each pack closes: its place in the order
    where = np.concatenate([long_docs, closing])
    unit_sizes = np.concatenate([np.ones(len(long_docs), dtype=np.int64), sizes])
    first = np.concatenate([long_docs, short[bounds[:-1]]])
    unit_keys = np.concatenate([keys[long_docs],
                                mix64(keys[short[bounds[:-1]]] ^ mix64(keys[closing] + sizes.astype(np.uint64)))])
    order = np.argsort(where, kind="stable")
    unit_sizes, first, unit_keys, is_pack = (unit_sizes[order], first[order], unit_keys[order],
                                             order >= len(long_docs))
    offsets = np.concatenate([[0], np.cumsum(unit_sizes)]).astype(np.int64)
    members = np.empty(offsets[-1], dtype=np.int64)
    members[offsets[:-1][~is_pack]] = first[~is_pack]
    packed = int(bounds[-1])  # short[:packed] are all in packs, pack after pack
    pack_offsets = offsets[:-1][is_pack]
    members[np.repeat(pack_offsets - bounds[:-1], sizes) + np.arange(packed)] = short[:packed]
    counts = {"samples": len(unit_sizes), "packs": len(sizes),
              "skipped_short": 0 if pack else len(short),
              "dropped_pack_remainder": len(short) - packed if pack else 0}
    return Units(members, offsets, unit_keys, counts)


def epoch_order(num_units: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The units of epoch `epoch` in training order: a permutation defined by our own hash, so it is the same on
    every machine and NumPy version (a Generator's streams may change between NumPy releases)."""
    index = np.arange(num_units, dtype=np.uint64)
    if not shuffle:
        return index.astype(np.int64)
    salt = mix64(np.uint64(seed % 2**64) ^ mix64(np.uint64(ORDER_SALT) + np.uint64(epoch)))
    return np.argsort(mix64(index ^ salt), kind="stable")  # mix64 is a bijection: no ties


def locate(positions: np.ndarray, num_units: int) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, index within that epoch's order) of global stream positions."""
    if num_units <= 0:
        raise ValueError("the corpus yields no training samples")
    positions = np.asarray(positions, dtype=np.int64)
    if (positions < 0).any():
        raise ValueError("stream positions start at 0")
    return positions // num_units, positions % num_units


def step_positions(start: int, micro_batch: int, grad_accum: int, rank: int, world: int) -> list[np.ndarray]:
    """Positions of the micro-batches worker `rank` of `world` trains on in the optimizer step whose block of
    micro_batch x grad_accum x world samples begins at `start` (step s of a run that kept one global batch G
    begins at s x G)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} workers")
    base = start + rank * micro_batch * grad_accum
    return [np.arange(base + k * micro_batch, base + (k + 1) * micro_batch, dtype=np.int64)
            for k in range(grad_accum)]


class Orders:
    """Epoch permutations computed once each (the last few kept)."""

    def __init__(self, num_units: int, seed: int, shuffle: bool, keep: int = 2) -> None:
        self.num_units, self.seed, self.shuffle, self.keep = num_units, seed, shuffle, keep
        self._cache: dict[int, np.ndarray] = {}

    def units_at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, unit) of each global position."""
        epochs, index = locate(positions, self.num_units)
        units = np.empty_like(index)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            units[mask] = self.order(int(epoch))[index[mask]]
        return epochs, units

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            while len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[epoch] = epoch_order(self.num_units, self.seed, epoch, self.shuffle)
        return self._cache[epoch]
