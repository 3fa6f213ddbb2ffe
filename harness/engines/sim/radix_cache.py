"""SGLang's radix-tree prefix cache, as a drop-in for `KVCache` (same methods, same block keys).

Followed: sgl-project/sglang `python/sglang/srt/mem_cache/radix_cache.py` (commit 006b0e3): `TreeNode`
with `children`, `lock_ref` and `last_access_time`; `match_prefix` splits a node where a match ends
inside it and refreshes access times along the path; `insert` adds the unmatched rest as a new child;
`evict` pops the least recently used *unlocked leaf* from a heap, frees it, and pushes its parent once
the parent has become an unlocked leaf; `inc_lock_ref`/`dec_lock_ref` move a path between "evictable"
and "protected", and the allocator's free slots plus `evictable_size()` are what a new request may use.

How the engine's blocks map onto the tree:

* The engine names a block by a content key (namespace, owner, index): block `index` of a *chain*, e.g.
  ("p", prefix, i) for the shared system prompt and ("s", session, i) for a session's own context.
  A context is the shared-prefix chain followed by the session's chain, so a node here is a run of
  consecutive blocks of one chain, and children split off where contexts diverge (the shared prefix is
  one node with a child per session). The engine tells the cache where a chain hangs
  (`link_chain`), because a block key alone does not say which prefix a session's context follows.
* Page granularity is the engine's `block_size` (SGLang's `--page-size`). Our default of 16 tokens
  trades token-level precision (a match loses at most 15 tokens at its end, as SGLang with
  `--page-size 16`) for speed; `block_size 1` gives SGLang's token-level default.
* Locks are per block: a block is locked while a request or pin references it (SGLang's `lock_ref` on
  the matched path). Every holder holds a whole root path, so a locked block's ancestors are locked and
  every unreferenced cached block sits in the tail of an unlocked leaf: the evictable count is exact.
* Eviction takes the least recently used unlocked leaf and frees blocks from its tail, only as many as
  the allocation needs (SGLang frees the whole leaf node; nodes there are one insertion each, here a
  maximal run, so freeing page by page keeps the same order without dropping a whole context at once).
  A leaf emptied this way is deleted and its parent becomes a leaf candidate.
* Recency is a logical clock (no wall clock): a node is touched when a request takes it as a prefix
  hit, when a block is added to it, and when its holder frees it (SGLang inserts, and so touches, the
  whole path when a request finishes).
* Duplicates: when a request computes a block whose content is already cached (two sessions prefilling
  the same prefix at once), SGLang frees the request's copy and points the request at the tree's. The
  engine keeps the request's block, so here the request holds the tree's copy through it
  (`duplicate_of`): the path stays locked, and both copies count as used until the request ends.
* Blocks are conserved: free (uncached, unreferenced) + cached-unreferenced (evictable) + referenced =
  num_blocks, checked by `check()` together with the tree's structure.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable

from harness.engines.sim.kv_cache import BlockCache, BlockKey

Chain = tuple[str, Hashable]
"""(namespace, owner): the blocks of one context segment, e.g. one session's own context."""


class Node:
    """A run of consecutive blocks of one chain: `blocks[i]` holds chain index `start + i`."""

    __slots__ = ("chain", "start", "blocks", "parent", "children", "last_access", "queued", "alive")

    def __init__(self, chain: Chain, start: int, parent: Node | None) -> None:
        self.chain = chain
        self.start = start
        self.blocks: list[int] = []
        self.parent = parent
        self.children: dict[BlockKey, Node] = {}  # keyed by the child's first block key
        self.last_access = 0
        self.queued = -1  # the last_access stamp of this node's live entry in the eviction heap; -1 = none
        self.alive = True

    @property
    def end(self) -> int:
        return self.start + len(self.blocks)

    @property
    def key(self) -> BlockKey:
        return (self.chain[0], self.chain[1], self.start)


class RadixCache(BlockCache):
    """Block allocator with a radix-tree prefix cache and LRU eviction of unlocked leaves.

    Blocks are integers 0..num_blocks-1. Same interface as `KVCache`; `link_chain` is extra.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        super().__init__(num_blocks, block_size, enable_prefix_caching)
        self.node_of: list[Node | None] = [None] * num_blocks
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # uncached and unreferenced; pop() next
        self.duplicate_of: dict[int, int] = {}  # a request's copy of cached content -> the tree's block
        self.root = Node(("", None), 0, None)
        self.tails: dict[Chain, Node] = {}  # chain -> its deepest node
        self.links: dict[Chain, tuple[int, BlockKey]] = {}  # chain -> (first index, key of the block before it)
        self.num_evictable = 0  # cached blocks nobody references
        self._heap: list[tuple[int, int, Node]] = []  # (last_access, push number, leaf)
        self._clock = 0
        self._pushes = 0

    # ------------------------------------------------------------------------------------- state
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: free plus evictable (SGLang's available + evictable size)."""
        return len(self.free_blocks) + self.num_evictable

    # --------------------------------------------------------------------------------- operations
    def link_chain(self, first: BlockKey, after: BlockKey) -> None:
        """The chain of block `first` starts there and continues the context after block `after`
        (e.g. a session's own blocks follow its shared prefix). Chains not linked start at the root."""
        self.links[(first[0], first[1])] = (first[2], after)

    def run_length(self, namespace: Hashable, owner: Hashable, start: int) -> int:
        """Consecutive cached blocks (namespace, owner, start), (.., start + 1), ... (a chain is one path
        of the tree, so this is its deepest cached index minus `start`)."""
        if (namespace, owner, start) not in self.cached:
            return 0
        return self.tails[(namespace, owner)].end - start  # type: ignore[index]

    def is_evictable(self, key: BlockKey) -> bool:
        """The block holding `key` is cached and unreferenced (taking it makes it unavailable)."""
        return self.ref_cnt[self.cached[key]] == 0

    def take(self, keys: Iterable[BlockKey]) -> list[int]:
        """Reference the cached blocks of `keys`, a path from the root (all must be cached); lock them
        and touch their nodes, as SGLang's match_prefix + inc_lock_ref."""
        ref, cached, node_of = self.ref_cnt, self.cached, self.node_of
        blocks = []
        last = None
        for key in keys:
            block = cached[key]
            if ref[block] == 0:
                self.num_evictable -= 1
            ref[block] += 1
            node = node_of[block]
            if node is not last:
                self._touch(node)  # type: ignore[arg-type]
                last = node
            blocks.append(block)
        if last is not None:
            self._queue_if_evictable(last)  # a hit that ends inside a leaf leaves its tail evictable
        return blocks

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks, evicting least recently used leaves if the free ones are too few; None (and
        no change) if free + evictable blocks are too few."""
        if n > len(self.free_blocks) + self.num_evictable:
            return None
        short = n - len(self.free_blocks)
        if short > 0:
            self._evict(short)
        out = [self.free_blocks.pop() for _ in range(n)]
        for block in out:
            self.ref_cnt[block] = 1
        return out

    def cache_block(self, block: int, content: BlockKey) -> None:
        """Insert a full block the caller holds under its context's previous block (SGLang's insert).

        Content already cached: the caller holds the tree's copy through its own (see the module
        docstring). Previous block not cached (its context was never linked): the block stays private.
        """
        if not self.enable_prefix_caching or self.block_hash[block] is not None or block in self.duplicate_of:
            return
        ref = self.ref_cnt
        assert ref[block] > 0, "only a block a request holds can be inserted"
        existing = self.cached.get(content)
        if existing is not None:
            if ref[existing] == 0:
                self.num_evictable -= 1
            ref[existing] += 1
            self.duplicate_of[block] = existing
            node = self.node_of[existing]
            self._touch(node)  # type: ignore[arg-type]
            self._queue_if_evictable(node)  # type: ignore[arg-type]
            return
        chain: Chain = (content[0], content[1])
        index = content[2]
        link = self.links.get(chain)
        before = link[1] if link is not None and link[0] == index else (
            (content[0], content[1], index - 1) if index > 0 else None)
        if before is None:
            parent = self.root
        else:
            parent_block = self.cached.get(before)
            if parent_block is None:
                return
            parent = self.node_of[parent_block]  # type: ignore[assignment]
            cut = before[2] - parent.start + 1
            if cut < len(parent.blocks):
                self._split(parent, cut)
        if parent is not self.root and parent.chain == chain and not parent.children:
            node = parent
        else:
            node = Node(chain, index, parent)
            parent.children[content] = node
        node.blocks.append(block)
        self.node_of[block] = node
        self.block_hash[block] = content
        self.cached[content] = block
        self.tails[chain] = node
        self._touch(node)

    def free(self, blocks: list[int]) -> None:
        """Drop one reference from each block (a path from the root); cached ones stay in the tree and
        become evictable when unreferenced, touched as SGLang's insert at request end touches them."""
        ref, node_of = self.ref_cnt, self.node_of
        touched: list[Node] = []
        for block in blocks:
            left = ref[block] - 1
            ref[block] = left
            node = node_of[block]
            if node is None:
                if left == 0:
                    self.free_blocks.append(block)
                    original = self.duplicate_of.pop(block, None)
                    if original is not None:
                        ref[original] -= 1
                        if ref[original] == 0:
                            self.num_evictable += 1
                        node = node_of[original]
                if node is None:
                    continue
            elif left == 0:
                self.num_evictable += 1
            if not touched or touched[-1] is not node:
                self._touch(node)
                touched.append(node)
        for node in touched:
            self._queue_if_evictable(node)

    def forget(self, blocks: list[int]) -> None:
        """Drop unreferenced blocks from the cache, with everything hanging below them, and put them
        first in line for reuse."""
        for block in blocks:
            node = self.node_of[block]
            if node is not None and self.ref_cnt[block] == 0:
                self._drop(node, self.block_hash[block][2] - node.start)  # type: ignore[index]

    # ------------------------------------------------------------------------------------ internals
    def _touch(self, node: Node) -> None:
        self._clock += 1
        node.last_access = self._clock

    def _queue_if_evictable(self, node: Node) -> None:
        """Put an unlocked leaf on the eviction heap under its current access time (once)."""
        if (node.alive and not node.children and node.blocks and self.ref_cnt[node.blocks[-1]] == 0
                and node.queued != node.last_access and node is not self.root):
            self._pushes += 1
            heapq.heappush(self._heap, (node.last_access, self._pushes, node))
            node.queued = node.last_access
            if len(self._heap) > 4 * len(self.cached) + 1024:
                self._heap = [e for e in self._heap if e[2].alive and e[2].queued == e[0]]
                heapq.heapify(self._heap)

    def _evict(self, count: int) -> None:
        """Free `count` cached blocks from the tails of the least recently used unlocked leaves."""
        ref, heap = self.ref_cnt, self._heap
        while count > 0:
            stamp, _, node = heapq.heappop(heap)  # an empty heap here means the books are wrong
            if not node.alive or node.queued != stamp:
                continue  # stale entry
            node.queued = -1
            if node.children:
                continue  # no longer a leaf; queued again when its last child goes
            if node.last_access != stamp:
                self._queue_if_evictable(node)  # touched since queued: back in under its new time
                continue
            blocks = node.blocks
            while count > 0 and blocks and ref[blocks[-1]] == 0:
                block = blocks.pop()
                self._uncache(block)
                self.free_blocks.append(block)
                self.evictions += 1
                count -= 1
            if not blocks:
                self._remove(node)
            else:
                self._queue_if_evictable(node)  # leftovers: still evictable, or locked until freed

    def _uncache(self, block: int) -> None:
        del self.cached[self.block_hash[block]]  # type: ignore[arg-type]
        self.block_hash[block] = None
        self.node_of[block] = None
        self.num_evictable -= 1

    def _remove(self, node: Node) -> None:
        """Delete an emptied node that has no children; its parent may become an evictable leaf."""
        node.alive = False
        parent = node.parent
        assert parent is not None
        del parent.children[node.key]
        self._retail(node)
        if parent is not self.root:
            self._queue_if_evictable(parent)

    def _retail(self, dead: Node) -> None:
        """`dead` left the tree: its chain's deepest node is now the nearest live ancestor of that chain."""
        if self.tails.get(dead.chain) is not dead:
            return
        up = dead.parent
        while up is not None and up is not self.root and up.chain == dead.chain:
            if up.alive and up.blocks:
                self.tails[dead.chain] = up
                return
            up = up.parent
        del self.tails[dead.chain]

    def _split(self, node: Node, cut: int) -> None:
        """SGLang's _split_node: `node` keeps its first `cut` blocks; the rest and the children move
        to a new child, so a new branch can hang after block `cut - 1`."""
        rest = Node(node.chain, node.start + cut, node)
        rest.blocks = node.blocks[cut:]
        del node.blocks[cut:]
        rest.children = node.children
        for child in rest.children.values():
            child.parent = rest
        node.children = {rest.key: rest}
        for block in rest.blocks:
            self.node_of[block] = rest
        rest.last_access = node.last_access
        if self.tails.get(node.chain) is node:
            self.tails[node.chain] = rest
        self._queue_if_evictable(rest)

    def _drop(self, node: Node, cut: int) -> None:
        """Remove `node`'s blocks from index `cut` on and its whole subtree (all unreferenced)."""
        dropped = node.blocks[cut:]
        del node.blocks[cut:]
        subtree = list(node.children.values())
        node.children = {}
        dead: list[Node] = []
        while subtree:
            child = subtree.pop()
            dead.append(child)
            dropped.extend(child.blocks)
            subtree.extend(child.children.values())
        for block in dropped:
            assert self.ref_cnt[block] == 0, "forgetting a block that is in use"
            self._uncache(block)
            self.free_blocks.append(block)
        for child in dead:
            child.alive = False
        for child in dead:
            self._retail(child)
        if node.blocks:
            self._queue_if_evictable(node)
        else:
            self._remove(node)

    # --------------------------------------------------------------------------------------- audit
    def check(self) -> tuple[int, int, int]:
        """(free, cached, used) block counts; raises AssertionError if the books or the tree are off."""
        ref = self.ref_cnt
        assert all(c >= 0 for c in ref), "negative reference count"
        free = set(self.free_blocks)
        assert len(free) == len(self.free_blocks), "a block is twice in the free list"
        assert all(ref[b] == 0 and self.block_hash[b] is None for b in free), "a free block is in use or cached"
        live = {id(n) for stamp, _, n in self._heap if n.alive and n.queued == stamp == n.last_access}
        in_tree = evictable = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            for key, child in node.children.items():
                assert child.alive and child.parent is node and key == child.key and child.blocks, "bad node"
                for i, block in enumerate(child.blocks):
                    content = (child.chain[0], child.chain[1], child.start + i)
                    assert self.block_hash[block] == content and self.cached.get(content) == block, "index out of sync"
                    assert self.node_of[block] is child, "block in the wrong node"
                    before = child.blocks[i - 1] if i else (node.blocks[-1] if node is not self.root else None)
                    assert ref[block] == 0 or before is None or ref[before] > 0, "a locked block under an unlocked one"
                    in_tree += 1
                    evictable += ref[block] == 0
                if not child.children and ref[child.blocks[-1]] == 0:
                    assert id(child) in live, "an evictable leaf is missing from the eviction heap"
                stack.append(child)
        assert in_tree == len(self.cached), "cache index has blocks outside the tree"
        assert evictable == self.num_evictable, "evictable count out of sync"
        for chain, tail in self.tails.items():
            assert tail.alive and tail.chain == chain, "chain tail is stale"
            assert all(c.chain != chain for c in tail.children.values()), "chain tail is not the deepest node"
        for copy, original in self.duplicate_of.items():
            assert ref[copy] > 0 and self.block_hash[copy] is None and ref[original] > 0, "bad duplicate"
        used = sum(1 for c in ref if c > 0)
        assert len(free) + evictable + used == self.num_blocks, "blocks not conserved"
        return len(free), evictable, used
