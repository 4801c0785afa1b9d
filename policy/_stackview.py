"""A cross-resource view of a stack for the stack policies.

References between resources are ids: under the offline mocks they are the mocked ids, after
`pulumi up` the real ones. During a real preview the id of a resource that does not exist yet is
unknown; CrossGuard then still tells us which resource a property came from through
`property_dependencies`, so `ref()` tries that first and the id second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pulumi_policy import PolicyResource

from infra.worker_groups import GROUP, INSTANCE, LAUNCH_TEMPLATE, find_template, group_size, instance_view

from ._props import UNKNOWN, get, is_unknown, plain, tags_of


@dataclass
class Res:
    type: str
    name: str
    urn: str
    props: dict[str, Any]
    raw: PolicyResource
    # An instance an Auto Scaling group keeps running: the group it stands for.
    group: Res | None = None

    @property
    def id(self) -> Any:
        return self.props.get("id")

    @property
    def tags(self) -> dict[str, Any]:
        tags = tags_of(self.props)
        return {} if is_unknown(tags) else tags


@dataclass
class StackView:
    resources: list[Res]
    _by_urn: dict[str, Res] = field(default_factory=dict)
    _by_id: dict[str, Res] = field(default_factory=dict)

    @classmethod
    def of(cls, resources: Iterable[PolicyResource]) -> StackView:
        view = cls([Res(r.resource_type, r.name, r.urn, plain(r.props), r) for r in resources])
        for r in view.resources:
            view._by_urn[r.urn] = r
            if isinstance(r.id, str) and r.id and not is_unknown(r.id):
                view._by_id[r.id] = r
        return view

    def of_type(self, *types: str) -> list[Res]:
        return [r for r in self.resources if r.type in types]

    def hosts(self) -> list[Res]:
        """The EC2 instances, and each instance an Auto Scaling group keeps running (its launch
        template's settings seen as an instance's, infra/worker_groups.py; type Instance)."""
        templates = [(t.id, t.props) for t in self.of_type(LAUNCH_TEMPLATE)]
        out = list(self.of_type(INSTANCE))
        for g in self.of_type(GROUP):
            props = instance_view(g.props, find_template(g.props, templates))
            n = group_size(g.props)
            for k in range(n):
                out.append(
                    Res(INSTANCE, g.name if n == 1 else f"{g.name}[{k}]", g.urn, props, g.raw, group=g)
                )
        return out

    def by_id(self, value: Any) -> Res | None:
        return self._by_id.get(value) if isinstance(value, str) else None

    def ref(self, res: Res, prop: str, types: Iterable[str] = (), value: Any = None) -> Res | Any | None:
        """The resource `res.props[prop]` (or `value`, one item of it) points at.

        Returns the Res, UNKNOWN when the reference cannot be resolved during preview, or None
        when it points outside the stack (an existing resource) or nowhere.
        """
        value = get(res.props, prop) if value is None else value
        found = self.by_id(value)
        if found is not None:
            return found
        types = set(types)
        deps = [
            self._by_urn.get(d.urn)
            for d in (res.raw.property_dependencies or {}).get(prop, [])
            if d is not None and d.urn in self._by_urn
        ]
        deps = [d for d in deps if d is not None and (not types or d.type in types)]
        if len(deps) == 1:
            return deps[0]
        if is_unknown(value) or deps:
            return UNKNOWN
        return None
