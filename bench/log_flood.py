"""A log flood into the lab's log pipeline: what rsyslogd (the central collector) and mtail (the kit's
programs of logs/mtail/) cost, and what they drop, at 50,000 lines/s for 60 s.

- The collector: ``tierwatch_lab.stack.rsyslog.start_collector`` as the demo starts it (central.log
  bounded to ``--max-mib``, the queue to ``--queue-size`` messages), with impstats every second for
  its own counters.
- mtail: ``tierwatch_lab.stack.mtail.start_mtail`` on central.log with the kit's programs.
- Senders: ``--senders`` processes, each an LB of its own (tag ``lb/edge/lb-N/primary/haproxy``),
  sending HAProxy ``option httplog`` lines over UDP at ``--rate`` / senders lines/s (one in ten a 503
  with ``SC--``), paced every 100 lines; their CPU is not counted.

Measured over the flood: utime+stime of rsyslogd and of mtail (/proc/PID/stat) as cores used, their
peak RSS (VmHWM), the lines sent, received by rsyslogd (imudp), dropped by its queue (discard mark
and full queue) and written to central.log (omfile), the kernel's drops (sent - received), the kept
files' size against the bound, and mtail's ``tierwatch_log_lines_total`` against the lines written
(with the time mtail needed to catch up after the flood). The 1-minute load average at the start and
the end is recorded too.

Run: ``python bench/log_flood.py --output bench/results/log-flood.json``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage
from side_by_side import cpu_seconds, run_fields, vm_hwm_mib, write_results

from tierwatch_lab.kit import kit_dir
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.mtail import start_mtail
from tierwatch_lab.stack.rsyslog import MIB, LogCollector, start_collector

LINE = (
    "127.0.0.1:{port} [07/Dec/2026:12:00:00.000] fe_web be_app/es-{server} 0/0/0/1/1 200 92 - - ---- "
    '4/4/0/0/0 0/0 "GET /work?n={n} HTTP/1.1"'
)
ERROR_LINE = (
    "127.0.0.1:{port} [07/Dec/2026:12:00:00.000] fe_web be_app/es-{server} 0/0/-1/-1/1 503 217 - - SC-- "
    '4/4/0/0/0 0/0 "GET /work?n={n} HTTP/1.1"'
)


def sender(address: tuple[str, int], tag: str, rate: float, seconds: float, sent: Any, cpu: Any) -> None:
    """Send lines under ``tag`` at ``rate``/s for ``seconds``; the count into ``sent.value``, the CPU
    seconds it took into ``cpu.value``."""
    head = f"<134>Dec  7 12:00:00 {tag}[1]: ".encode()
    count = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        start = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate) + 100
            while count < due:
                template = ERROR_LINE if count % 10 == 9 else LINE
                body = template.format(port=40000 + count % 20000, server=1 + count % 4, n=count)
                sock.sendto(head + body.encode(), address)
                count += 1
            delay = start + count / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    sent.value = count
    cpu.value = time.process_time()


def impstats(collector: LogCollector) -> dict[str, dict[str, Any]]:
    """The last value of each of rsyslogd's impstats counters objects, by name."""
    found: dict[str, dict[str, Any]] = {}
    if not collector.stats_file.exists():
        return found
    for line in collector.stats_file.read_text().splitlines():
        if "{" in line:
            record = json.loads(line[line.index("{") :])
            found[record["name"]] = record
    return found


def pipeline_counts(collector: LogCollector) -> dict[str, int]:
    stats = impstats(collector)
    udp = next((v for k, v in stats.items() if k.startswith("imudp(") and "submitted" in v), {})
    queue = stats.get("tw_in", {})
    central = [v for k, v in stats.items() if k.startswith("action-") and k.endswith("omfile")]
    return {
        "received": int(udp.get("submitted", 0)),
        "queue_discarded_at_mark": int(queue.get("discarded.nf", 0)),
        "queue_discarded_full": int(queue.get("discarded.full", 0)),
        "queue_max_size": int(queue.get("maxqsize", 0)),
        "queue_size_now": int(queue.get("size", 0)),
        # the actions in config order: rejected.log, central.log, the collector's own messages
        "written": int(central[1]["processed"]) if len(central) > 1 else 0,
        "rejected": int(central[0]["processed"]) if central else 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine_load = LoadAverage()
    with Stack() as stack:
        collector = start_collector(
            stack, max_bytes=args.max_mib * MIB, queue_size=args.queue_size, stats_interval=1
        )
        tags = [collector.tag("lb", "edge", f"lb-{i + 1}", "primary", "haproxy") for i in range(args.senders)]
        mtail = None if args.no_mtail else start_mtail(stack, [collector.central], kit_dir("logs/mtail"))
        assert collector.process is not None
        pids = {"rsyslogd": collector.process.pid}
        if mtail is not None:
            pids["mtail"] = mtail.process.pid
        counted_before = mtail.value("tierwatch_log_lines_total") or 0.0 if mtail else 0.0

        context = multiprocessing.get_context("fork")
        sent = [context.Value("q", 0) for _ in tags]
        sender_cpu = [context.Value("d", 0.0) for _ in tags]
        per_sender = args.rate / args.senders
        processes = [
            context.Process(
                target=sender, args=(collector.address, tag, per_sender, args.seconds, value, cpu)
            )
            for tag, value, cpu in zip(tags, sent, sender_cpu, strict=True)
        ]
        load0 = os.getloadavg()[0]
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        flood_seconds = time.monotonic() - started
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load1 = os.getloadavg()[0]
        total_sent = sum(v.value for v in sent)

        # rsyslogd drains its queue, then mtail catches up with what it wrote
        time.sleep(2.5)  # two impstats rounds after the last line
        wait_for(lambda: pipeline_counts(collector)["queue_size_now"] == 0, 60, "rsyslogd's queue to drain")
        time.sleep(1.5)
        counts = pipeline_counts(collector)
        caught_up = time.monotonic()

        def mtail_lines() -> float:
            if mtail is None:
                return 0.0
            return (mtail.value("tierwatch_log_lines_total") or 0.0) - counted_before

        # until it has counted every line written, or counts no more for 5 s (a lagging mtail never
        # opens the copies rotated away while it read an older one: their lines are lost to it)
        last, still_since = -1.0, time.monotonic()
        while mtail is not None and mtail_lines() < counts["written"]:
            now_counted = mtail_lines()
            if now_counted != last:
                last, still_since = now_counted, time.monotonic()
            elif time.monotonic() - still_since > 5:
                break
            time.sleep(0.5)
        catch_up_seconds = time.monotonic() - caught_up
        counted = mtail_lines()
        cpu2 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        kept = collector.files_kept()
        result = {
            **run_fields("bench/log_flood.py", machine_load),
            "settings": {
                "rate_asked": args.rate,
                "seconds": args.seconds,
                "senders": args.senders,
                "max_bytes": args.max_mib * MIB,
                "queue_size": args.queue_size,
                "mtail": not args.no_mtail,
                "mtail_programs": sorted(p.name for p in kit_dir("logs/mtail").glob("*.mtail")),
            },
            "flood_seconds": round(flood_seconds, 2),
            "rate_reached": round(total_sent / flood_seconds),
            "lines": {
                "sent": total_sent,
                **{k: v for k, v in counts.items() if k != "queue_size_now"},
                "dropped_by_kernel": total_sent - counts["received"],
                "dropped_total": total_sent - counts["written"],
                "counted_by_mtail": int(counted) if mtail else None,
                "mtail_short_by": int(counts["written"] - counted) if mtail else None,
            },
            "mtail_catch_up_seconds": round(catch_up_seconds, 2),
            "cpu_cores_during_flood": {n: round((cpu1[n] - cpu0[n]) / flood_seconds, 3) for n in pids},
            "cpu_cores_senders_during_flood": round(sum(v.value for v in sender_cpu) / flood_seconds, 3),
            "cpu_seconds_until_caught_up": {n: round(cpu2[n] - cpu0[n], 2) for n in pids},
            "cpu_us_per_line": {
                "rsyslogd_per_line_received": round(
                    (cpu2["rsyslogd"] - cpu0["rsyslogd"]) / max(counts["received"], 1) * 1e6, 1
                ),
                **(
                    {
                        "mtail_per_line_counted": round(
                            (cpu2["mtail"] - cpu0["mtail"]) / max(counted, 1) * 1e6, 1
                        )
                    }
                    if mtail
                    else {}
                ),
            },
            "peak_rss_mib": {n: round(vm_hwm_mib(pid), 1) for n, pid in pids.items()},
            "kept_files_bytes": {p.name: p.stat().st_size for p in kept},
            "kept_total_within_bound": sum(p.stat().st_size for p in kept) <= args.max_mib * MIB + 64 * 1024,
            "loadavg_1m_window_start_end": [load0, load1],
            "versions": {
                "rsyslogd": os.popen("rsyslogd -v").read().splitlines()[0],
                "mtail": os.popen("mtail --version").read().split(" git")[0],
            },
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50_000, help="lines per second, all senders together")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--senders", type=int, default=2, help="sending processes (one LB tag each)")
    parser.add_argument("--max-mib", type=int, default=64, help="central.log and its rotated copy together")
    parser.add_argument("--queue-size", type=int, default=10000, help="rsyslogd's queue, in messages")
    parser.add_argument("--no-mtail", action="store_true", help="the collector alone")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "command")}, indent=2))
    write_results(result, args.output)


if __name__ == "__main__":
    main()
