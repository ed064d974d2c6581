"""``redis-snapshot`` of one Redis set: BGSAVE on the cluster's master, wait until it is done and good,
then keep a copy of the RDB in the set's directory (temp file, fsync, rename), the newest ``keep`` kept.

The copy comes from the master's own file when the master is on this machine (a loopback or unix
socket address, its ``CONFIG GET dir``/``dbfilename`` a readable file written by this BGSAVE); else from
``redis-cli --rdb``, which asks the master for a fresh RDB over the replication protocol (it needs the
SYNC permission, and makes the master fork once more). Run it on the Redis host to avoid the second.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import ClusterConfig, LoadedConfig, Secret, TargetConfig
from ..config.backups import BackupSet
from .outcome import Outcome, StageError
from .snapshot_files import snapshot_name, snapshots

POLL = 0.1
RDB_MAGIC = b"REDIS"
CLIENT_TIMEOUT = 10.0


def run_snapshot(loaded: LoadedConfig, bset: BackupSet) -> Outcome:
    source = bset.redis
    assert source is not None
    cluster = next(c for c in loaded.config.clusters if c.name == bset.cluster)
    password = loaded.password_for(cluster.name)
    deadline = time.monotonic() + bset.timeout
    target, client = _master(cluster, password)
    try:
        started = time.monotonic()
        requested = time.time()
        _bgsave(client, deadline)
        directory = Path(source.directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = directory / snapshot_name(bset.name, requested)
        local = _local_rdb(client, target)
        if local is not None:
            _copy_atomically(local, final)
        else:
            _fetch_with_redis_cli(target, password, final, deadline)
        duration = time.monotonic() - started
    finally:
        client.close()
    _prune(directory, bset.name, source.keep)
    return Outcome(
        success=True, rto_seconds=duration, restored_bytes=final.stat().st_size, backup_label=final.name
    )


def _client(target: TargetConfig, password: Secret | None) -> Any:
    import redis

    options: dict[str, Any] = {
        "password": password.reveal() if password else None,
        "socket_timeout": CLIENT_TIMEOUT,
        "socket_connect_timeout": CLIENT_TIMEOUT,
        "decode_responses": True,
        "client_name": "tierwatch-snapshot",
    }
    if target.url.startswith("rediss://"):
        options["ssl_cert_reqs"] = "none" if target.tls_skip_verify else "required"
        if target.tls_ca_file:
            options["ssl_ca_certs"] = target.tls_ca_file
    return redis.Redis.from_url(target.url, **options)


def _master(cluster: ClusterConfig, password: Secret | None) -> tuple[TargetConfig, Any]:
    """The one target that says role:master (stage master); two masters is a split brain: refused."""
    import redis

    masters = []
    for target in cluster.targets:
        client = _client(target, password)
        try:
            if client.info("replication").get("role") == "master":
                masters.append((target, client))
                continue
        except (redis.RedisError, OSError):
            pass
        client.close()
    if len(masters) != 1:
        for _, client in masters:
            client.close()
        found = "no target" if not masters else f"{len(masters)} targets"
        raise StageError("master", f"{found} of cluster {cluster.name} answered as master; expected one")
    return masters[0]


def _bgsave(client: Any, deadline: float) -> None:
    """BGSAVE (after one already running), then wait until it ended well (stage bgsave)."""
    import redis

    before = client.info("persistence")
    try:
        client.bgsave()
    except redis.ResponseError as exc:
        if "in progress" not in str(exc):
            raise StageError("bgsave", f"BGSAVE refused: {str(exc)[:200]}") from None
        before = _wait_saved(client, before, deadline, any_end=True)  # its data predates our request
        try:
            client.execute_command("BGSAVE", "SCHEDULE")  # after an AOF rewrite, if one runs
        except redis.ResponseError as again:
            raise StageError("bgsave", f"BGSAVE refused: {str(again)[:200]}") from None
    _wait_saved(client, before, deadline)


def _wait_saved(
    client: Any, before: dict[str, Any], deadline: float, any_end: bool = False
) -> dict[str, Any]:
    while True:
        info = client.info("persistence")
        if not int(info.get("rdb_bgsave_in_progress", 0)):
            if "rdb_saves" in info:
                advanced = int(info["rdb_saves"]) > int(before.get("rdb_saves", 0))
            else:
                advanced = int(info["rdb_last_save_time"]) > int(before["rdb_last_save_time"])
            if any_end or advanced:
                if info.get("rdb_last_bgsave_status") != "ok":
                    raise StageError("bgsave", "the master's last BGSAVE failed (rdb_last_bgsave_status)")
                return dict(info)
        if time.monotonic() >= deadline:
            raise StageError("bgsave", "BGSAVE did not finish within the set's timeout")
        time.sleep(POLL)


def _on_this_machine(target: TargetConfig) -> bool:
    parts = urlsplit(target.url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_rdb(client: Any, target: TargetConfig) -> Path | None:
    """The master's RDB file when the master runs here and the file is readable."""
    import redis

    if not _on_this_machine(target):
        return None
    try:
        directory = client.config_get("dir").get("dir")
        name = client.config_get("dbfilename").get("dbfilename")
    except redis.ResponseError:  # CONFIG renamed or not permitted
        return None
    if not directory or not name:
        return None
    path = Path(directory) / name
    return path if os.access(path, os.R_OK) and path.is_file() and not path.is_symlink() else None


def _copy_atomically(source: Path, final: Path) -> None:
    temp = final.with_name(f".{final.name}.tmp")
    try:
        with open(source, "rb") as src, open(temp, "wb") as out:
            if src.read(len(RDB_MAGIC)) != RDB_MAGIC:
                raise StageError("copy", f"{source} is not an RDB file")
            out.write(RDB_MAGIC)
            shutil.copyfileobj(src, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        _commit(temp, final)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StageError("copy", f"cannot copy the RDB into {final.parent}: {exc.strerror}") from None
    except StageError:
        temp.unlink(missing_ok=True)
        raise


def _fetch_with_redis_cli(
    target: TargetConfig, password: Secret | None, final: Path, deadline: float
) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StageError(
            "copy",
            "the master is not on this machine and redis-cli is missing: run this on the Redis host",
        )
    parts = urlsplit(target.url)
    argv = [cli]
    if parts.scheme == "unix":
        argv += ["-s", parts.path]
    else:
        argv += ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    if parts.username:
        argv += ["--user", parts.username]
    if parts.scheme == "rediss":
        argv.append("--tls")
        if target.tls_ca_file:
            argv += ["--cacert", target.tls_ca_file]
        if target.tls_skip_verify:
            argv.append("--insecure")
    temp = final.with_name(f".{final.name}.tmp")
    env = dict(os.environ)
    if password is not None:
        env["REDISCLI_AUTH"] = password.reveal()  # never on the command line (ps shows it)
    try:
        done = subprocess.run(
            [*argv, "--rdb", str(temp)],
            env=env,
            stdout=subprocess.DEVNULL,  # only its exit code and the file it writes are used
            stderr=subprocess.DEVNULL,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        if done.returncode != 0 or not temp.exists():
            raise StageError("copy", f"redis-cli --rdb failed with code {done.returncode}")
        with open(temp, "rb") as check:
            if check.read(len(RDB_MAGIC)) != RDB_MAGIC:
                raise StageError("copy", "redis-cli --rdb wrote no RDB file")
            os.fsync(check.fileno())
        _commit(temp, final)
    except subprocess.TimeoutExpired:
        raise StageError("copy", "redis-cli --rdb did not finish within the set's timeout") from None
    finally:
        temp.unlink(missing_ok=True)


def _commit(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(directory: Path, set_name: str, keep: int) -> None:
    """Remove the set's oldest snapshots beyond the newest ``keep`` (only files of its own pattern)."""
    for old in snapshots(directory, set_name)[:-keep]:
        old.unlink(missing_ok=True)
