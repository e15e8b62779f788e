"""The Dagster wiring, one room per area; ``threegen_dagster/definitions.py`` is the index.

    resources.py    the store, one resource per model stage, splats, SN17 policy and identity
    io_manager.py   every output stored as a file format in the content-addressed store
    generation.py   the generation's assets (partition = prompt x seed), its score check, `generate`
    catalog.py      the catalog asset, `refresh_catalog`, the sensor that refreshes after a generation
    inbox.py        the task-inbox sensor
    retention.py    the `cleanup` job and its daily schedule
    sn17.py         SN17 task and submission sensors, the `submit` job, validator and submission tables
    instance.py     the Dagster instance the CLI and the UI share (DAGSTER_HOME, dagster.yaml)
    sqlite_storage.py  its class, ThreegenInstance: Dagster's SQLite storage, connections kept open
    workers.py      the `gpu_workers` asset: every GPU worker of the pool, as a table

A room imports the pure package (``..``), ``resources`` / ``io_manager``, and the rooms it follows
(``generation`` <- ``inbox``, ``retention``, ``sn17`` <- ``catalog``); nothing outside ``defs/``,
``definitions.py`` and the CLI's run helpers imports Dagster.
"""
