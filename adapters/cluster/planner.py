"""Where a placement group's bundles go on a cluster: a pure function of the bundles, the strategy and what
each live node has free, with Ray's rules (``plan``).

- ``STRICT_PACK``: every bundle on one node (the first, in the order given, that holds them all), else none.
- ``STRICT_SPREAD``: each bundle on a node of its own, else none.
- ``PACK``: on one node when one holds them all, else on as few nodes as it can (best effort).
- ``SPREAD``: each on a node of its own when it can, else as evenly over the nodes as they fit (best effort).

``None`` means the group cannot be placed now: it stays pending and is planned again when what the nodes have
free changes. Nodes are tried in the order given (the caller puts the one it prefers first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from anyray.policy import fits

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def plan(bundles: Sequence[Mapping[str, float]], strategy: str,
         nodes: Mapping[str, Mapping[str, float]]) -> list[str] | None:
    """A node id per bundle (in bundle order), or None when the bundles cannot be placed now.

    ``nodes``: each live node's id -> the resources it has free now (its order is the order of preference).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}: expected one of {STRATEGIES}.")
    if not bundles:
        raise ValueError("A placement group needs at least one bundle.")
    free = {node: dict(avail) for node, avail in nodes.items()}
    if strategy == "STRICT_PACK":
        return _on_one_node(bundles, free)
    if strategy == "STRICT_SPREAD":
        return _each_on_its_own(bundles, free)
    if strategy == "PACK":
        return _on_one_node(bundles, free) or _greedy(bundles, free, pack=True)
    return _each_on_its_own(bundles, free) or _greedy(bundles, free, pack=False)


def _total(bundles) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for k, v in bundle.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _on_one_node(bundles, free) -> list[str] | None:
    total = _total(bundles)
    for node, avail in free.items():
        if fits(total, avail):
            return [node] * len(bundles)
    return None


def _each_on_its_own(bundles, free) -> list[str] | None:
    """A node per bundle, no node twice (a bipartite matching, by augmenting paths), or None."""
    if len(bundles) > len(free):
        return None
    nodes = list(free)
    holder: dict[str, int] = {}  # node -> the bundle it holds

    def assign(index: int, seen: set) -> bool:
        for node in nodes:
            if node in seen or not fits(bundles[index], free[node]):
                continue
            seen.add(node)
            if node not in holder or assign(holder[node], seen):
                holder[node] = index
                return True
        return False

    for index in range(len(bundles)):
        if not assign(index, set()):
            return None
    out = [""] * len(bundles)
    for node, index in holder.items():
        out[index] = node
    return out


def _greedy(bundles, free, pack: bool) -> list[str] | None:
    """Largest bundles first. PACK: onto a node already used while one has room, else the node with the most
    free; SPREAD: onto the node holding the fewest of the group's bundles (the most free on a tie)."""
    order = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
    count = dict.fromkeys(free, 0)
    out: list[str] = [""] * len(bundles)
    for index in order:
        bundle = bundles[index]
        room = [node for node in free if fits(bundle, free[node])]
        if not room:
            return None
        if pack:
            used = [node for node in room if count[node]]
            node = used[0] if used else max(room, key=lambda n: sum(free[n].values()))
        else:
            node = min(room, key=lambda n: (count[n], -sum(free[n].values())))
        out[index] = node
        count[node] += 1
        for k, v in bundle.items():
            free[node][k] = free[node].get(k, 0.0) - v
    return out
