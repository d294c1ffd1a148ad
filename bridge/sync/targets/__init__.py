"""Where assignments go.  Every target implements :class:`Target`; the runner feeds all of them
from the same desired state.  See :func:`build_targets` for the names used in ``sync.targets``."""

from bridge.sync.targets.base import ApplyResult, Target, TargetError

__all__ = ["ApplyResult", "Target", "TargetError"]
