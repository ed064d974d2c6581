"""The batch commands' tool runner (tierwatch.restore.accounts.run): its output is bounded."""

from __future__ import annotations

import pytest

from tierwatch.restore.accounts import MAX_OUTPUT, run
from tierwatch.restore.outcome import StageError


def test_a_tool_that_floods_its_output_is_refused_not_read_into_memory() -> None:
    flood = ["sh", "-c", f"head -c {MAX_OUTPUT + 1} /dev/zero | tr '\\0' x"]
    with pytest.raises(StageError) as caught:
        run(flood, None, timeout=30, stage="restore")
    assert caught.value.stage == "restore" and f"more than {MAX_OUTPUT} bytes" in caught.value.message


def test_output_within_the_bound_and_a_failure_with_its_last_lines() -> None:
    assert run(["sh", "-c", "echo one; echo two"], None, timeout=30, stage="s") == "one\ntwo\n"
    with pytest.raises(StageError) as caught:
        run(["sh", "-c", "echo why >&2; exit 3"], None, timeout=30, stage="s")
    assert "failed with code 3" in caught.value.message and "why" in caught.value.message
