"""Paged KV cache with prefix caching, as vLLM V1's BlockPool + KVCacheManager behave.

* Memory is `num_blocks` blocks of `block_size` tokens. A request holds a list of blocks covering the
  tokens it has computed (plus the ones being computed this step).
* A block that becomes full is *cached* under a hash of its content. Content hashes here are symbolic:
  block i of a session's context is ("s", session, i), unless the whole block lies inside the shared
  prefix, then ("p", prefix_id, i). The context is append-only across turns, so turn k+1 finds turn k's
  blocks (and other sessions find the shared prefix) exactly as token-id hashing would.
* Freed blocks go to the tail of an LRU free queue in reverse order (a sequence's last block is evicted
  first) and keep their hash: they can still be hit until the allocator reuses them, which evicts them
  from the cache. A prefix hit on a free cached block takes it out of the free queue.
* Content keys are (namespace, owner, index) triples: block `index` of a chain such as one session's
  context. `run_length` answers "how many consecutive blocks of this chain are cached from `start`"
  from a memo that a change to that chain invalidates, so a waiting request that is retried every step
  does not walk its whole context every step.
* Blocks are conserved: free (no hash, unreferenced) + cached (hash, unreferenced) + used (referenced) =
  num_blocks, checked by `check()`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

BlockKey = tuple[str, Hashable, int]
"""(namespace, owner, index): block `index` of a chain of blocks, e.g. one session's context."""


class BlockCache:
    """What every prefix-cache model shares: blocks 0..num_blocks-1 with reference counts, the index of
    cached content, and the derived figures. Subclasses decide what is free and what is evicted."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[BlockKey | None] = [None] * num_blocks  # content key of a cached block
        self.cached: dict[BlockKey, int] = {}  # content key -> block
        self.evictions = 0  # cached blocks given to other content

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (free and cached-but-unreferenced)."""
        raise NotImplementedError

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by requests (vLLM's kv_cache_usage)."""
        return self.num_used_blocks / self.num_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def take(self, keys: Iterable[BlockKey]) -> list[int]:
        raise NotImplementedError

    def link_chain(self, first: BlockKey, after: BlockKey) -> None:
        """Chain `first` continues a context after block `after` (a session's own blocks follow its shared
        prefix). Caches keyed block by block need no link; a radix tree does."""

    def match_prefix(self, keys: Iterable[BlockKey]) -> list[int]:
        """Take the cached blocks of the longest run of leading keys."""
        if not self.enable_prefix_caching:
            return []
        hit: list[BlockKey] = []
        for key in keys:
            if key not in self.cached:
                break
            hit.append(key)
        return self.take(hit)


class KVCache(BlockCache):
    """Block allocator with an LRU prefix cache (vLLM V1's BlockPool)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self._runs: dict[Hashable, dict[int, int]] = {}  # (namespace, owner) -> {start: cached run length}
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    # ------------------------------------------------------------------------------------- state
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now (free and cached-but-unreferenced)."""
        return len(self.free_queue)

    # --------------------------------------------------------------------------------- operations
    def run_length(self, namespace: Hashable, owner: Hashable, start: int) -> int:
        """Consecutive cached blocks (namespace, owner, start), (.., start + 1), ..."""
        if not self.enable_prefix_caching:
            return 0
        memo = self._runs.setdefault((namespace, owner), {})
        length = memo.get(start)
        if length is None:
            length = 0
            while (namespace, owner, start + length) in self.cached:
                length += 1
            memo[start] = length
        return length

    def _uncached(self, key: BlockKey) -> None:
        """Keep the run memo exact when block `index` of a chain leaves the cache: runs through it end there."""
        memo = self._runs.get(key[:2])
        if memo:
            index = key[2]
            for start, length in memo.items():
                if start <= index < start + length:
                    memo[start] = index - start

    def _newly_cached(self, key: BlockKey) -> None:
        """A block joined the cache: a run ending right before it grows (through any cached blocks after)."""
        memo = self._runs.get(key[:2])
        if memo:
            namespace, owner, index = key
            for start, length in memo.items():
                if start + length == index:
                    while (namespace, owner, start + length) in self.cached:
                        length += 1
                    memo[start] = length

    def is_evictable(self, key: BlockKey) -> bool:
        """The block holding `key` is cached and unreferenced (taking it removes it from the free queue)."""
        return self.ref_cnt[self.cached[key]] == 0

    def take(self, keys: Iterable[BlockKey]) -> list[int]:
        """Reference the cached blocks of `keys` (all must be cached); they leave the free queue."""
        blocks = [self.cached[k] for k in keys]
        for block in blocks:
            if self.ref_cnt[block] == 0:
                del self.free_queue[block]
            self.ref_cnt[block] += 1
        return blocks

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks from the LRU end of the free queue, or None (and no change) if too few."""
        if n > len(self.free_queue):
            return None
        out = []
        for _ in range(n):
            block, _ = self.free_queue.popitem(last=False)
            old = self.block_hash[block]
            if old is not None:
                del self.cached[old]
                self._uncached(old)
                self.block_hash[block] = None
                self.evictions += 1
            self.ref_cnt[block] = 1
            out.append(block)
        return out

    def cache_block(self, block: int, content: BlockKey) -> None:
        """Register a full block's content; a duplicate of content already cached stays uncached."""
        if not self.enable_prefix_caching or self.block_hash[block] is not None or content in self.cached:
            return
        self.block_hash[block] = content
        self.cached[content] = block
        self._newly_cached(content)

    def free(self, blocks: list[int]) -> None:
        """Drop one reference from each block; unreferenced ones join the free queue, tail block first."""
        for block in reversed(blocks):
            self.ref_cnt[block] -= 1
            if self.ref_cnt[block] == 0:
                self.free_queue[block] = None

    def forget(self, blocks: list[int]) -> None:
        """Drop unreferenced blocks from the prefix cache and put them first in line for reuse."""
        for block in blocks:
            key = self.block_hash[block]
            if self.ref_cnt[block] == 0 and key is not None:
                del self.cached[key]
                self._uncached(key)
                self.block_hash[block] = None
                self.free_queue.move_to_end(block, last=False)

    def check(self) -> tuple[int, int, int]:
        """(free, cached, used) block counts; raises AssertionError if the books do not balance."""
        in_queue = set(self.free_queue)
        used = sum(1 for c in self.ref_cnt if c > 0)
        cached_free = sum(1 for b in in_queue if self.block_hash[b] is not None)
        free = len(in_queue) - cached_free
        assert all(self.ref_cnt[b] == 0 for b in in_queue), "a referenced block is in the free queue"
        assert all(c >= 0 for c in self.ref_cnt), "negative reference count"
        assert free + cached_free + used == self.num_blocks, "blocks not conserved"
        assert all(self.block_hash[b] == h for h, b in self.cached.items()), "cache index out of sync"
        return free, cached_free, used
