"""Nested group expansion with cycle detection (pure).

Why our own expansion: OpenLDAP has no in-chain matching rule (it silently returns nothing), and
even on AD one in-chain query per group is slower than reading each group's direct members once
and resolving the graph in memory.  Cycles (A in B in A) happen in real directories; they must
neither loop forever nor hide members, so each group's closure is computed once with an explicit
stack and a visited set.
"""

from __future__ import annotations

from collections.abc import Mapping


def effective_memberships(
    direct_users: Mapping[str, set[str] | frozenset[str]],
    direct_groups: Mapping[str, set[str] | frozenset[str]],
) -> tuple[dict[str, frozenset[str]], list[tuple[str, ...]]]:
    """From each group's direct user members and direct member groups, every user's effective groups.

    ``direct_users[g]`` = user ids directly in group g; ``direct_groups[g]`` = group ids directly in g.
    Returns ``(user -> groups, cycles)``, where each cycle found is reported once as a tuple of group
    ids (for a warning; membership through a cycle still counts, as AD's in-chain rule does)."""
    # parents[g] = groups that contain g directly; a user in g is also in every ancestor of g.
    parents: dict[str, set[str]] = {}
    for outer, inners in direct_groups.items():
        for inner in inners:
            parents.setdefault(inner, set()).add(outer)

    cycles: list[tuple[str, ...]] = []
    seen_cycles: set[frozenset[str]] = set()
    ancestors_cache: dict[str, frozenset[str]] = {}

    def ancestors(start: str) -> frozenset[str]:
        if start in ancestors_cache:
            return ancestors_cache[start]
        found: set[str] = {start}
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for parent in parents.get(node, ()):
                if parent in path:
                    cyc = path[path.index(parent):]
                    key = frozenset(cyc)
                    if key not in seen_cycles:
                        seen_cycles.add(key)
                        cycles.append(cyc)
                if parent not in found:
                    found.add(parent)
                    stack.append((parent, (*path, parent)))
        result = frozenset(found)
        ancestors_cache[start] = result
        return result

    out: dict[str, set[str]] = {}
    for group, users in direct_users.items():
        closure = ancestors(group)
        for user in users:
            out.setdefault(user, set()).update(closure)
    return {u: frozenset(g) for u, g in out.items()}, cycles
