"""A run in its own process holding one slot of the ``gpu`` pool, as a run worker that the daemon
launched would: ``python -m threegen_dagster_tests.pool_holder`` (the instance is $DAGSTER_HOME).

Its one op, in the pool, prints ``holding <run id>`` once it has the slot and keeps it until a
line arrives on stdin (or the process is killed). Not a threegen process: its run carries no
threegen process tags."""

import sys

import dagster as dg


@dg.op(pool="gpu")
def hold(context: dg.OpExecutionContext) -> None:
    print(f"holding {context.run_id}", flush=True)
    sys.stdin.readline()


def main() -> None:
    job = dg.GraphDefinition("hold_gpu", node_defs=[hold]).to_job()
    with dg.DagsterInstance.get() as instance:
        job.execute_in_process(instance=instance, run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})


if __name__ == "__main__":
    main()
