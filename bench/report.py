"""The Markdown report of a ``bench.run`` result: publish, delivery and idle tables with ratios against Nchan."""

from __future__ import annotations

from typing import Any

__all__ = ["report"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return f"{value['median']:.{digits}f} ({value['min']:.{digits}f}–{value['max']:.{digits}f})"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _median(value: Any) -> float | None:
    return value["median"] if isinstance(value, dict) else value


def _ratio(ours: Any, theirs: Any) -> str:
    a, b = _median(ours), _median(theirs)
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


# The Nchan + Redis row each publish row is compared with: Nchan has only an
# HTTP publisher, so every row is set against Nchan's HTTP row sent by the
# same client, the Python load generator or h2load.
_PUBLISH_BASELINE = {
    "http": "http",
    "grpc_unary": "http",
    "grpc_stream": "http",
    "http_h2load": "http_h2load",
    "grpc_stream_h2load": "http_h2load",
}


def report(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}", ""]
    ceiling = results["redis_ceiling"]
    lines += [f"Redis ceiling (redis-benchmark, 50 clients, no pipelining): XADD {ceiling['xadd_per_s']:.0f}/s, "
              f"XREAD {ceiling['xread_per_s']:.0f}/s", ""]
    targets = [name for name in ("conduit", "nchan_memory", "nchan_redis") if name in results]
    conduit = results.get("conduit", {})
    nchan = results.get("nchan_redis", {})

    lines += ["| publish | target | publishes/s | server CPU µs/publish | Redis CPU µs/publish | "
              "rate vs Nchan+Redis http from the same client (Python or h2load) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name in targets:
        for kind in _PUBLISH_BASELINE:
            row = results[name].get(f"publish_{kind}")
            if row is None:
                continue
            ratio = ""
            if name == "conduit":
                baseline = nchan.get(f"publish_{_PUBLISH_BASELINE[kind]}", {}).get("publishes_per_s")
                ratio = _ratio(row["publishes_per_s"], baseline)
            lines.append(f"| {kind} | {name} | {_fmt(row['publishes_per_s'], 0)} | {_fmt(row['server_cpu_us_per_publish'])} | "
                         f"{_fmt(row['redis_cpu_us_per_publish'])} | {ratio} |")
    lines.append("")

    lines += ["| delivery | target | connected | delivered / missing | first p50 ms | p50 ms | p99 ms | slowest ms | "
              "server CPU µs/delivery | p99 and CPU vs Nchan memory / Redis |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    scenario_names = [key for key in conduit if key.startswith("fanout_")] + ["many_channels"]
    for scenario in scenario_names:
        for name in targets:
            row = results[name].get(scenario)
            if row is None:
                continue
            ratio = ""
            if name == "conduit":
                parts = []
                for other in ("nchan_memory", "nchan_redis"):
                    theirs = results.get(other, {}).get(scenario)
                    if theirs:
                        parts.append(f"{_ratio(row['p99_ms'], theirs['p99_ms'])}, {_ratio(row['server_cpu_us_per_delivery'], theirs['server_cpu_us_per_delivery'])}")
                ratio = " / ".join(parts)
            lines.append(
                f"| {scenario} | {name} | {row['connected']} | {row['delivered']} / {row['missing']} | "
                f"{_fmt(row.get('first_p50_ms'), 2)} | {_fmt(row['p50_ms'])} | "
                f"{_fmt(row['p99_ms'])} | {_fmt(row.get('slowest_ms'))} | {_fmt(row['server_cpu_us_per_delivery'])} | {ratio} |"
            )
    lines.append("")

    lines += ["| idle | target | connected (still) | RSS bytes/connection | Redis commands/s | Redis connections added / blocked | server CPU % | RSS vs Nchan memory |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scenario in [key for key in conduit if key.startswith("idle_")]:
        for name in targets:
            row = results[name].get(scenario)
            if row is None:
                continue
            ratio = ""
            if name == "conduit" and "nchan_memory" in results:
                ratio = _ratio(row["rss_bytes_per_connection"], results["nchan_memory"][scenario]["rss_bytes_per_connection"])
            lines.append(
                f"| {row['subscribers']} on {row['channels']} channels | {name} | {row['connected']} ({row['still_connected']}) | "
                f"{_fmt(row['rss_bytes_per_connection'], 0)} | {_fmt(row['redis_commands_per_s'])} | "
                f"{row['redis_connections_added']} / {row['redis_blocked_clients']} | {_fmt(row['server_cpu_percent_idle'])} | {ratio} |"
            )
    return "\n".join(lines)
