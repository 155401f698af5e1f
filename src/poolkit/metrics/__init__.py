"""Pool metrics and logs: Prometheus and OpenTelemetry exporters, and ``PoolMonitor``.

The exporters load their optional dependency only when first used::

    from poolkit.metrics import PoolCollector     # poolkit[prometheus]
    from poolkit.metrics import PoolInstruments   # poolkit[otel]
    from poolkit.metrics import PoolMonitor       # standard library only
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolkit.metrics._common import PoolLike, resolve_pool
from poolkit.metrics.monitor import PoolMonitor

if TYPE_CHECKING:
    from poolkit.metrics.otel import PoolInstruments
    from poolkit.metrics.prometheus import PoolCollector

__all__ = ["PoolCollector", "PoolInstruments", "PoolLike", "PoolMonitor", "resolve_pool"]

_LAZY = {
    "PoolCollector": "poolkit.metrics.prometheus",
    "PoolInstruments": "poolkit.metrics.otel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'poolkit.metrics' has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        extra = "prometheus" if name == "PoolCollector" else "otel"
        raise ImportError(
            f"poolkit.metrics.{name} needs the [{extra}] extra: pip install 'poolkit[{extra}]' "
            f"({exc})"
        ) from exc
