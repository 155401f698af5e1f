"""One process of the fleet test: a poolkit Pool of psycopg connections under a RedisBudget.

Run as a script with one JSON argument. Prints "ready" once built, starts its query threads on
a "go" line from stdin, stops on "stop" (or EOF) and prints one JSON line with its results.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import psycopg

    from poolkit import Pool
    from poolkit.cluster import RedisBudget

    budget = RedisBudget(
        cfg["redis"],
        cfg["budget"],
        cfg["limit"],
        lease_ttl=cfg["ttl"],
        renew_interval=cfg["renew"],
        min_per_process=cfg["min_per"],
        restart_quiet=cfg.get("quiet"),
    )
    app = f"{cfg['app']}/{cfg['worker']}"

    def connect() -> psycopg.Connection:
        return psycopg.connect(cfg["dsn"], application_name=app, autocommit=True)

    pool: Pool[psycopg.Connection] = Pool(
        connect,
        destroy=lambda c: c.close(),
        max_size=cfg["max_size"],
        acquire_timeout=cfg["acquire_timeout"],
        check_after_idle=None,
        budget=budget,
        name=app,
    )
    stop = threading.Event()
    ok = [0] * cfg["threads"]
    errors: list[str] = []

    def run(i: int) -> None:
        while not stop.is_set():
            try:
                with pool.acquire() as conn:
                    conn.execute("SELECT pg_sleep(0.005)").fetchone()
                ok[i] += 1
            except Exception as exc:
                errors.append(repr(exc))
                time.sleep(0.05)

    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(ok))]
    for t in threads:
        t.start()
    sys.stdin.readline()  # "stop" or EOF
    stop.set()
    for t in threads:
        t.join(60)
    info = dataclasses.asdict(budget.info())
    stats = pool.stats()
    pool.close()
    budget.close()
    print(
        json.dumps(
            {
                "worker": cfg["worker"],
                "ok": sum(ok),
                "errors": len(errors),
                "first_errors": errors[:5],
                "budget": info,
                "created_total": stats.created_total,
                "create_errors_total": stats.create_errors_total,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
