"""Ray's calls that its own annotations leave partly untyped, behind typed signatures: the one
place ray_cluster's strict type check meets Ray's `Unknown`s (each with the reason beside it).

Ray 2.60 annotates `ray.wait`'s waitables and `ray.kill`'s handle with an unbound type, gives
`ray.shutdown`, `ray.nodes` and `ray.util.get_node_ip_address` no return type, and types an
actor's method calls only for methods decorated `@ray.method`; callers here get lists of
ObjectRef[T], the node table as JSON objects and actor handles as the Protocol they declare.
Ray is imported inside each function: importing this module must not import Ray (the CLI's
start-up and the modules that run without it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.util.placement_group import PlacementGroup

T = TypeVar("T")

# One record of `ray.nodes()` (GCS node table): values untyped until read (cluster_status's accessors)
NodeRecord = Mapping[str, object]


def wait(
    refs: Sequence[ObjectRef[T]], *, timeout: float | None, num_returns: int = 1
) -> tuple[list[ObjectRef[T]], list[ObjectRef[T]]]:
    import ray

    ready, rest = ray.wait(list(refs), num_returns=num_returns, timeout=timeout)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - Ray types the waitables' element as an unbound TypeVar
    return ready, rest  # pyright: ignore[reportUnknownVariableType] - as above: the refs given, split


def get(refs: Sequence[ObjectRef[T]]) -> list[T]:
    import ray

    return ray.get(list(refs))


def kill(actor: object) -> None:
    import ray

    ray.kill(actor)  # pyright: ignore[reportUnknownMemberType, reportArgumentType] - any actor handle; Ray types it ActorHandle[Unknown]


def shutdown() -> None:
    import ray

    ray.shutdown()  # pyright: ignore[reportUnknownMemberType] - unannotated in Ray


def nodes() -> list[NodeRecord]:
    """`ray.nodes()`: the GCS node table, one JSON object a node."""
    import ray

    return [n for n in ray.nodes() if isinstance(n, Mapping)]  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - unannotated in Ray: a list of dicts


def node_ip() -> str:
    """This process's node IP (`ray.util.get_node_ip_address`)."""
    import ray

    return str(ray.util.get_node_ip_address())  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType] - unannotated in Ray


def placement_ready(pg: PlacementGroup) -> ObjectRef[object]:
    """The ref that resolves once the placement group is placed (`pg.ready()`)."""
    return pg.ready()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - unannotated in Ray


def cluster_resources() -> dict[str, float]:
    import ray

    return {str(k): float(v) for k, v in ray.cluster_resources().items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - Ray leaves the key type unbound


def available_resources() -> dict[str, float]:
    import ray

    return {str(k): float(v) for k, v in ray.available_resources().items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - as cluster_resources


def placement_group_table() -> dict[str, object]:
    """`ray.util.placement_group_table()`: {placement group id: its JSON record}."""
    import ray

    table = ray.util.placement_group_table()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType] - unannotated in Ray: a dict of dicts
    return {str(k): v for k, v in table.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType] - as above
