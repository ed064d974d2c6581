"""The hosts dashboard: the machines under the stack, from node_exporter (job ``node``).

Its panels are the signals of rules/hosts.rules.yml (CPU saturation, memory pressure, disks filling,
file handles) and their context (CPU by mode, load, disk and network throughput). Node targets may carry
``cluster`` and ``region`` labels (the cluster the host serves); the ``instance`` variable picks hosts.
"""

from __future__ import annotations

from .dsl import UP_DOWN, C, Dashboard, R, Row, q, rate, sel, stat, ts

NODE = 'job="node"'
# the filesystems the host rules watch (selectors.node_filesystem of rules/src/settings.yml)
FILESYSTEMS = 'fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|fuse.lxcfs"'
INSTANCE = 'instance=~"$instance"'
HOST = (NODE, R, INSTANCE)  # every node series: the job, $cluster, $region and $instance
DISKS = (*HOST, FILESYSTEMS)


def per_cpu(expr: str) -> str:
    """``expr`` divided by the host's number of CPUs."""
    cpus = rate("node_cpu_seconds_total", *HOST, 'mode="idle"')
    return f"{expr} / on (job, instance) group_left count by (job, instance) ({cpus})"


HOSTS = Dashboard(
    file="hosts.json",
    uid="tierwatch-hosts",
    title="tierwatch / Hosts",
    description="The machines under the stack, from node_exporter (job node): CPU saturation, memory "
    "pressure, filesystems filling up and the kernel's file handles (the host alerts), with CPU by "
    "mode, load, disk and network throughput for context. Pick hosts with the instance variable; the "
    "cluster and region variables apply to node targets that carry those labels.",
    tiers=".*",
    extra_variables=(("instance", "Host", f"label_values(node_cpu_seconds_total{{{NODE}, {C}}}, instance)"),),
    rows=(
        Row(
            "CPU and memory",
            (
                stat(
                    "Node exporters scraped",
                    "Whether Prometheus scrapes each host's node_exporter (job node) successfully.",
                    "none",
                    q(sel("up", NODE, INSTANCE), "{{instance}}"),
                    mappings=UP_DOWN,
                    width=24,
                    height=4,
                ),
                ts(
                    "CPU busy",
                    "Share of time the host's CPUs are not idle (all CPUs averaged; iowait counts as "
                    "busy, as in HostCpuSaturated).",
                    "percentunit",
                    q(
                        "1 - avg by (instance) ("
                        + rate("node_cpu_seconds_total", *HOST, 'mode="idle"')
                        + ")",
                        "{{instance}}",
                    ),
                    alerts=("HostCpuSaturated",),
                    thresholds=((None, "green"), (0.9, "red")),
                ),
                ts(
                    "CPU by mode",
                    "Share of CPU time per mode (user, system, iowait, steal, ...), averaged over the "
                    "host's CPUs: iowait points at the disk, steal at the hypervisor.",
                    "percentunit",
                    q(
                        "avg by (instance, mode) ("
                        + rate("node_cpu_seconds_total", *HOST, 'mode!="idle"')
                        + ")",
                        "{{instance}} {{mode}}",
                    ),
                ),
                ts(
                    "Load per CPU",
                    "5-minute load average divided by the number of CPUs: above 1, work waits for CPU "
                    "(or for the disk, in uninterruptible sleep).",
                    "short",
                    q(per_cpu(sel("node_load5", *HOST)), "{{instance}}"),
                ),
                ts(
                    "Memory available",
                    "MemAvailable / MemTotal: memory the kernel can give to processes without "
                    "swapping (free plus reclaimable cache).",
                    "percentunit",
                    q(
                        sel("node_memory_MemAvailable_bytes", *HOST)
                        + " / "
                        + sel("node_memory_MemTotal_bytes", *HOST),
                        "{{instance}}",
                    ),
                    alerts=("HostMemoryPressure",),
                    thresholds=((None, "red"), (0.1, "green")),
                ),
                ts(
                    "Memory in use",
                    "MemTotal - MemAvailable: memory processes hold and the kernel cannot reclaim.",
                    "bytes",
                    q(
                        sel("node_memory_MemTotal_bytes", *HOST)
                        + " - "
                        + sel("node_memory_MemAvailable_bytes", *HOST),
                        "{{instance}}",
                    ),
                ),
            ),
        ),
        Row(
            "Disks and file handles",
            (
                ts(
                    "Filesystem free",
                    "Free share of each writable filesystem the host alerts watch (avail / size; no "
                    "tmpfs-like mounts).",
                    "percentunit",
                    q(
                        sel("node_filesystem_avail_bytes", *DISKS)
                        + " / "
                        + sel("node_filesystem_size_bytes", *DISKS),
                        "{{instance}} {{mountpoint}}",
                    ),
                    q(
                        sel("node_filesystem_files_free", *DISKS)
                        + " / "
                        + sel("node_filesystem_files", *DISKS),
                        "{{instance}} {{mountpoint}} inodes",
                    ),
                    alerts=("HostDiskSpaceLow", "HostDiskFillingUp", "HostInodesLow"),
                    thresholds=((None, "red"), (0.1, "orange"), (0.4, "green")),
                ),
                ts(
                    "Filesystem free space",
                    "Bytes available to unprivileged users on each filesystem: its slope is the trend "
                    "HostDiskFillingUp extrapolates.",
                    "bytes",
                    q(sel("node_filesystem_avail_bytes", *DISKS), "{{instance}} {{mountpoint}}"),
                    alerts=("HostDiskFillingUp",),
                ),
                ts(
                    "Disk busy",
                    "Share of time each block device had I/O in flight (io_time): near 100%, the disk "
                    "is saturated.",
                    "percentunit",
                    q(rate("node_disk_io_time_seconds_total", *HOST), "{{instance}} {{device}}"),
                ),
                ts(
                    "File handles allocated",
                    "Kernel file handles allocated / fs.file-max: at the limit every process of the "
                    "host fails to open files and sockets (ENFILE).",
                    "percentunit",
                    q(
                        sel("node_filefd_allocated", *HOST) + " / " + sel("node_filefd_maximum", *HOST),
                        "{{instance}}",
                    ),
                    alerts=("HostFileDescriptorsRunningOut",),
                    thresholds=((None, "green"), (0.9, "red")),
                ),
                stat(
                    "Textfile collector",
                    "Whether node_exporter read every file of its textfile directory (the restore-test and "
                    "Redis snapshot results come through it).",
                    "none",
                    q(sel("node_textfile_scrape_error", *HOST), "{{instance}}"),
                    alerts=("HostTextfileScrapeError",),
                    mappings=(("0", "OK", "green"), ("1", "FAILING", "red")),
                ),
                ts(
                    "Network traffic",
                    "Bytes received and sent per second on each network interface (loopback excluded).",
                    "Bps",
                    q(
                        "sum by (instance) ("
                        + rate("node_network_receive_bytes_total", *HOST, 'device!="lo"')
                        + ")",
                        "{{instance}} received",
                    ),
                    q(
                        "sum by (instance) ("
                        + rate("node_network_transmit_bytes_total", *HOST, 'device!="lo"')
                        + ")",
                        "{{instance}} sent",
                    ),
                ),
            ),
        ),
    ),
)
