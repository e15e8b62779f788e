"""The submit job for one task in a process of its own, as a code location's run worker runs it, on the
instance in $DAGSTER_HOME; prints the op's output (or null) as JSON. Tests kill it mid-send or run two
at once::

    python -m threegen_dagster_tests.sn17.submit_process ROOT TASK_ID '{"store": ..., "sn17 options": ...}'
"""

import json
import sys
from pathlib import Path


def main() -> None:
    from bittensor.utils import networking

    networking.get_external_ip = lambda: "127.0.0.1"  # a closed network: the validators are on loopback
    import dagster as dg

    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.defs.sn17 import TAG_TASK

    from .harness import miner_settings

    root, task_id, options = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    job = build_definitions(miner_settings(root, **options)).resolve_job_def("submit")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, tags={TAG_TASK: task_id}, raise_on_error=False,
                                        run_config={"ops": {"submit_task": {"config": {"task_id": task_id}}}})
    print(json.dumps(result.output_for_node("submit_task") if result.success else None, default=str), flush=True)


if __name__ == "__main__":
    main()
