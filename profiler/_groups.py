"""Process-group identity: name, size, member ranks, backend; cached per group object."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

__all__ = ["GroupInfo", "GroupRegistry"]


class GroupInfo(NamedTuple):
    name: str
    size: int
    ranks: tuple[int, ...]
    backend: str | None


class GroupRegistry:
    """Maps whatever a caller passed as `group` to its `GroupInfo`, once per distinct object.

    Rows hold the `GroupInfo` object itself: info is captured the first time a group is seen, so
    events of a group destroyed before the next flush keep their size and ranks, and a group
    name reused after destroy/re-init gets a new object (never the old group's size).
    """

    def __init__(self, new_counter: Any = itertools.count) -> None:
        self._names: dict[Any, GroupInfo] = {}
        self.infos: dict[str, GroupInfo] = {}
        # Advanced by every clear(): the compiled hook keeps its last group's info and counter
        # while this is unchanged (a group's entry is only ever added, never replaced, between
        # clears). Never rebound: the hook holds the object.
        self.epoch = new_counter()

    def clear(self) -> None:
        """Forget every group (after init/destroy_process_group, names and objects are reused)."""
        self._names.clear()
        self.infos.clear()
        next(self.epoch)  # after the clear: a call in between still finds the old entries

    def resolve_info(self, group: Any) -> GroupInfo:
        """Info of `group` (None = default group). Hot path: one dict lookup when cached."""
        try:
            return self._names[group]
        except KeyError:
            pass
        except TypeError:  # unhashable (a rank list): resolve every time, never cached
            return self._compute(group)
        info = self._compute(group)
        self._names[group] = info
        return info

    def _compute(self, group: Any) -> GroupInfo:
        import torch.distributed as dist

        obj = group
        if obj is None:
            obj = dist.GroupMember.WORLD
            if obj is None:
                return _UNKNOWN
        if isinstance(obj, str):
            name = obj
        elif isinstance(obj, dist.ProcessGroup):
            name = obj.group_name
        else:  # DeviceMesh, (DeviceMesh, dim), rank lists: as functional collectives resolve them
            from torch.distributed import _functional_collectives as funcol

            name = funcol._resolve_group_name(obj)
            _auto_label_mesh(obj, name)
        info = self.infos.get(name)
        if info is None:
            info = self.infos[name] = self._info(
                name, obj if isinstance(obj, dist.ProcessGroup) else None)
        return info

    @staticmethod
    def _info(name: str, pg: Any) -> GroupInfo:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        try:
            if pg is None:
                pg = c10d._resolve_process_group(name)
            ranks = tuple(int(r) for r in dist.get_process_group_ranks(pg))
            try:
                backend = str(dist.get_backend(pg))
            except Exception:
                backend = None
            return GroupInfo(name, len(ranks), ranks, backend)
        except Exception:
            return GroupInfo(name, -1, (), None)

    def global_rank(self, group: str | GroupInfo, group_rank: int) -> int | None:
        """Global rank of `group_rank` in `group` (a GroupInfo or a group name), for
        group_src/group_dst arguments."""
        info = group if isinstance(group, GroupInfo) else self.infos.get(group)
        if info is None or not (0 <= group_rank < len(info.ranks)):
            return None
        return info.ranks[group_rank]


_UNKNOWN = GroupInfo("?", -1, (), None)


def _auto_label_mesh(obj: Any, name: str) -> None:
    """Label groups of a named DeviceMesh dimension (e.g. mesh_dim_names=("dp", "tp"))."""
    from ._phases import _LABELS

    if name in _LABELS:
        return
    mesh, dim = (obj if isinstance(obj, tuple) and len(obj) == 2 else (obj, 0))
    names = getattr(mesh, "mesh_dim_names", None)
    if not names:
        return
    if isinstance(dim, str):
        _LABELS[name] = dim
    elif isinstance(dim, int) and 0 <= dim < len(names):
        _LABELS[name] = names[dim]
