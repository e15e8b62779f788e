"""Dagster's SQLite instance storage, with the event log's connections kept open between events.

Dagster's ``SqliteEventLogStorage`` builds a new SQLAlchemy engine, opens the database file, commits
and throws the engine away for every event it stores, and a run stores 60-80 of them (two files for
asset events: the run's shard and the index): about 0.5 s of a cold ``threegen generate`` on 2 cores.
This storage keeps one engine per file (the index always, the runs' least recently used out) and runs
SQLite at ``synchronous=NORMAL``, the setting SQLite recommends for WAL databases, which all of
Dagster's are: a commit no longer waits for the disk; a power cut may lose the last commits, never the
database. A file deleted or replaced under it (``dagster run wipe`` elsewhere) is opened afresh.
Everything else (tables, files, locking between processes) is Dagster's own, so an instance can
switch between this and the default freely.

dagster.yaml (the project's; no ``storage`` key, or this is replaced by the one named there)::

    instance_class:
      module: threegen_dagster.defs.sqlite_storage
      class: ThreegenInstance
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as db
import yaml
from watchdog.observers import Observer
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (INDEX_SHARD_NAME, SqliteEventLogStorage,
                                                                       SqliteEventLogStorageWatchdog)
from dagster._core.storage.runs import SqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (DagsterSqliteStorage, _event_logs_directory, _runs_directory,
                                                  _schedule_directory)
from dagster._serdes import ConfigurableClassData

OPEN_FILES = 8  # engines kept: the index, the runs being written, a few being read (the UI reads many)


def _normal_sync(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


class _OpenFiles(OrderedDict):
    """shard -> (engine, the file's (device, inode) when last seen), least recently used first; and the
    process that opened them."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()

    def close(self) -> None:
        """Close every connection (SQLite then folds the WAL into the file), unless this is a forked
        child, where they are its parent's to close: those are only forgotten."""
        mine = self.pid == os.getpid()
        for engine, _ in self.values():
            engine.dispose(close=mine)
        self.clear()
        self.pid = os.getpid()


class _WalWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's watcher of a run's file (the UI's live run page), also woken by the file's write-ahead
    log: a writer that keeps its connection open commits into ``-wal``; the file itself changes only
    when SQLite checkpoints."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._patterns = [self._log_path, f"{self._log_path}-wal"]

    def on_modified(self, event) -> None:
        self._process_log()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with an engine per shard kept open (see the module)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._open = _OpenFiles()
        weakref.finalize(self, self._open.close)  # also at exit, as Dagster's closes after every event
        super().__init__(base_dir, inst_data)

    def _engine(self, shard: str) -> db.engine.Engine:
        if self._open.pid != os.getpid():
            self._open.close()
        try:
            file = os.stat(self.path_for_shard(shard))
            identity = (file.st_dev, file.st_ino)
        except FileNotFoundError:
            identity = None
        engine, known = self._open.pop(shard, (None, None))
        if known is not None and identity != known:  # deleted or replaced (`dagster run wipe` in another process)
            engine.dispose()
            engine = None
            self._initialized_dbs.discard(shard)  # a new file gets Dagster's tables again
        if engine is None:
            engine = create_engine(self.conn_string_for_shard(shard), pool_size=1, max_overflow=4,
                                   connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
            db.event.listen(engine, "connect", _normal_sync)
            runs = [name for name in self._open if name != INDEX_SHARD_NAME]  # the index stays open
            for name in runs[:max(0, len(self._open) + 1 - OPEN_FILES)]:
                self._open.pop(name)[0].dispose()
        self._open[shard] = (engine, identity)  # most recently used last
        return engine

    def _initdb(self, engine: db.engine.Engine, for_index_shard: bool = False) -> None:
        """Dagster's own check loads alembic's migration scripts (0.1 s) to learn whether the file's
        tables exist: a stamped file has them, so only a new file goes on to Dagster's set-up."""
        try:
            with engine.connect() as conn:
                if conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar():
                    return
        except db.exc.OperationalError:  # no such table: a new file
            pass
        super()._initdb(engine, for_index_shard)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def watch(self, run_id: str, cursor: str | None, callback) -> None:
        """Dagster's ``watch``, with the watcher that also sees the write-ahead log."""
        if not self._obs:
            self._obs = Observer()
            self._obs.start()
        watchdog = _WalWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (watchdog, self._obs.schedule(watchdog, self._base_dir, recursive=True))

    def dispose(self) -> None:
        super().dispose()
        with self._db_lock:
            self._open.close()


class PooledSqliteStorage(DagsterSqliteStorage):
    """Dagster's SQLite storage (same files, same layout) with the pooled event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> PooledSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class ThreegenInstance(DagsterInstance):
    """Dagster's instance, whose storage, unless dagster.yaml names one (``storage: postgres: ...``),
    is ``PooledSqliteStorage`` on the files where Dagster keeps its own by default (``<DAGSTER_HOME>/history``,
    ``/history/runs``, ``/schedules``), so an instance keeps its history when it switches either way.
    (A storage has no way to learn the instance's folder; the instance class is where Dagster asks
    for the defaults, with the folder: ``InstanceRef.from_dir``.)"""

    @classmethod
    def config_schema(cls) -> dict:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> dict[str, ConfigurableClassData | None]:
        storage = ConfigurableClassData(__name__, PooledSqliteStorage.__name__,
                                        yaml.dump({"base_dir": base_dir}))  # as Dagster's DagsterSqliteStorage
        return {**InstanceRef.config_defaults(base_dir), "storage": storage}
