"""Monkeypatching: install the wrappers into torch.distributed / funcol, and restore torch's own."""

from __future__ import annotations

from typing import Any

from ._ops import DIST_APIS, FUNCOL_APIS, P2P_RECV, P2P_SEND
from ._rows import register_api
from ._wrappers import make_batch_wrapper, make_lifecycle_wrapper, make_wait_tensor, make_wrapper

__all__ = ["Patches"]

# Point-to-point and rooted ops carry peer/root: they take the general path.
_GENERAL_OPS = (P2P_SEND, P2P_RECV, "broadcast", "reduce", "gather", "scatter")


class Patches:
    """The module attributes replaced by wrappers, so that they can be put back."""

    def __init__(self) -> None:
        self._patches: list[tuple[Any, str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self._patches)

    def _patch(self, owner: Any, attr: str, new: Any) -> None:
        self._patches.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, new)

    def _patch_where_bound(self, owners: tuple, attr: str, orig: Any, new: Any) -> None:
        """Replace `orig` in every module that binds it under `attr` (torch.distributed
        re-exports distributed_c10d's functions)."""
        for owner in owners:
            if getattr(owner, attr, None) is orig:
                self._patch(owner, attr, new)

    def install(self, rec: Any) -> None:
        """Wrap every intercepted API for recorder `rec`."""
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        owners = (dist, c10d)
        for spec in DIST_APIS:
            orig = getattr(c10d, spec.attr, None)
            if orig is None:
                continue
            simple = spec.op not in _GENERAL_OPS
            self._patch_where_bound(owners, spec.attr, orig, make_wrapper(
                rec, register_api(spec.name, spec.op), spec, orig, simple))
        orig = c10d.batch_isend_irecv
        self._patch_where_bound(owners, "batch_isend_irecv", orig, make_batch_wrapper(rec, orig))
        for attr in ("init_process_group", "destroy_process_group"):
            orig = getattr(c10d, attr)
            self._patch_where_bound(owners, attr, orig, make_lifecycle_wrapper(rec, orig, attr))
        try:
            from torch.distributed import _functional_collectives as funcol
        except Exception:  # torch without functional collectives
            funcol = None
        if funcol is not None:
            for spec in FUNCOL_APIS:
                orig = getattr(funcol, spec.attr, None)
                if orig is None:
                    continue
                self._patch(funcol, spec.attr,
                            make_wrapper(rec, register_api(spec.name, spec.op), spec, orig, False))
            self._patch(funcol, "wait_tensor", make_wait_tensor(rec, funcol.wait_tensor))

    def uninstall(self) -> None:
        """Restore every patched attribute, last patched first."""
        for owner, attr, orig in reversed(self._patches):
            setattr(owner, attr, orig)
        self._patches.clear()
