"""Pool metrics and logs: Prometheus and OpenTelemetry exporters, and ``PoolMonitor``.

The exporters live in submodules so their optional dependencies load only when used::

    from poolkit.metrics.prometheus import PoolCollector   # poolkit[prometheus]
    from poolkit.metrics.otel import PoolInstruments        # poolkit[otel]
    from poolkit.metrics import PoolMonitor                  # standard library only
"""

from __future__ import annotations

from poolkit.metrics._common import PoolLike, resolve_pool
from poolkit.metrics.monitor import PoolMonitor

__all__ = ["PoolLike", "PoolMonitor", "resolve_pool"]
