"""Batch commands about backups: ``tierwatch restore-test``, ``tierwatch pitr`` and
``tierwatch redis-snapshot`` (docs/backups.md).

- ``commands``: the three commands as the CLI calls them (signals, exit codes, publishing);
- ``pg_restore_test`` / ``redis_restore_test``: restore one set into scratch space and verify it;
- ``pitr``: a point-in-time restore into a new instance left running for a person;
- ``redis_snapshot``: BGSAVE on the master, then an atomic copy of its RDB;
- ``pgbackrest``, ``pg_server``: the pgBackRest commands and the throwaway PostgreSQL server;
- ``scratch``: run directories, locks, leftovers and disk space; ``accounts``: child processes as the
  set's OS user, dying with this process; ``textfile`` and ``journal``: the metrics file and the audit line.

Nothing here imports the exporter, the recovery service or the lab; psycopg and redis are loaded only
by the modules that need them.
"""
