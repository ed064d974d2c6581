"""`tierwatch demo` starts the whole stack, the exporter sees every target up, and Ctrl-C leaves no
process or data directory behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tierwatch_lab.stack import wait_for

from helpers import CliProcess, metric_value, processes_mentioning, run_cli


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# inherited_sigint_ignored: a background job of a non-interactive shell (`./scripts/test &`) starts with
# SIGINT ignored, and Python keeps an inherited SIG_IGN; the demo must stop on Ctrl-C all the same
@pytest.mark.parametrize(("sentinel", "inherited_sigint_ignored"), [(False, False), (True, True)])
def test_demo_runs_everything_and_cleans_up(sentinel: bool, inherited_sigint_ignored: bool) -> None:
    demo = CliProcess(
        "demo", *(["--sentinel"] if sentinel else []),
        before_exec=_ignore_sigint if inherited_sigint_ignored else None,
    )  # fmt: skip
    try:
        config = wait_for(lambda: demo.printed(r"Config\s+(\S+)"), 180, "demo config")
        base = wait_for(lambda: demo.printed(r"Exporter\s+(http://\S+?)/\s"), 5, "exporter address")
        stack_dir = str(Path(config).parents[1])
        expected = 4 + 2 + 5 + 4 + (3 if sentinel else 0)

        def all_up() -> str | None:
            text = httpx.get(base + "/metrics", timeout=5).text
            ups = [line for line in text.splitlines() if line.startswith("tierwatch_up{")]
            return text if len(ups) == expected and all(line.endswith(" 1.0") for line in ups) else None

        text = wait_for(all_up, 60, "every demo target up")
        assert metric_value(text, "tierwatch_role", target="redis-a", role="primary") == 1
        assert metric_value(text, "tierwatch_role", target="pg-dr", role="replica") == 1
        assert metric_value(text, "tierwatch_role", target="lb-1", role="active") == 1
        page = httpx.get(base + "/").text
        assert "VIP served by lb-1" in page
        assert "Express" in demo.output and "keepalived VRRP" in demo.output
        # every component logs into the collector (the VRRP LBs through its socket from their namespaces)
        central = Path(wait_for(lambda: demo.printed(r"Logs\s+every component's log in (\S+);"), 5, "Logs"))
        sources = ("haproxy", "postgres", "redis", "app", "exporter", "recovery")

        def logged() -> set[str]:
            return {line.split(" ")[5] for line in central.read_text(errors="replace").splitlines()}

        wait_for(lambda: set(sources) <= logged(), 30, "a central.log line of every source")
        assert processes_mentioning(stack_dir)
    finally:
        code = demo.stop(60)
    lines = demo.lines
    assert code == 0, "".join(lines)
    assert "stopped; every process and data directory removed" in "".join(lines)
    assert not Path(stack_dir).exists()
    assert not processes_mentioning(stack_dir)
    # only the demo's own namespaces: tests on other pytest workers may hold theirs right now
    ours = re.findall(r"\btw-[0-9a-f]+-lb\d\b", "".join(lines))
    assert len(ours) == (2 if "keepalived VRRP" in "".join(lines) else 0), "".join(lines)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in ours if ns in namespaces], namespaces


@pytest.mark.parametrize("argv", [["demo"], ["demo", "drill", "redis-master"]])
def test_demo_outside_a_clone_says_so_in_one_sentence(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "TIERWATCH_KIT_DIR": str(tmp_path / "not-a-clone")}
    out = run_cli(*argv, env=env)
    assert out.returncode == 1
    assert "runs from a clone of the tierwatch repository" in out.stderr
    assert "Traceback" not in out.stderr
