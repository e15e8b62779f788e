"""One iteration of Dagster's real sensor daemon over ``threegen_dagster.definitions:defs``, in this
process: ``python -m threegen_dagster_tests.daemon_tick --at UNIX_SECONDS [--kill-at POINT]``.

The instance is ``$DAGSTER_HOME`` and the settings come from the environment, as under
``dagster-daemon run``. ``--at`` sets the daemon's clock (so consecutive iterations pass the sensors'
minimum interval); ``--kill-at`` makes the daemon SIGKILL itself at one of its own crash points
(``TICK_CREATED``, ``TICK_HELD``, ``RUN_CREATED``, ``RUN_LAUNCHED``) while ticking the inbox sensor:
Dagster's own hooks for testing that a daemon dying there loses nothing."""

import argparse
import logging
import os
import signal

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import (
    InProcessTestWorkspaceLoadTarget,
    create_test_daemon_workspace_context,
    freeze_time,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.sensor import execute_sensor_iteration


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", type=float, required=True)
    parser.add_argument("--kill-at", default="")
    args = parser.parse_args()
    crash = {"inbox_sensor": {args.kill_at: signal.SIGKILL}} if args.kill_at else None
    target = InProcessTestWorkspaceLoadTarget(InProcessCodeLocationOrigin(LoadableTargetOrigin(
        module_name="threegen_dagster.definitions", attribute="defs", working_directory=os.getcwd())))
    with dg.DagsterInstance.get() as instance, freeze_time(args.at):
        with create_test_daemon_workspace_context(target, instance) as workspace:
            list(execute_sensor_iteration(workspace, logging.getLogger("daemon_tick"), threadpool_executor=None,
                                          submit_threadpool_executor=None, debug_crash_flags=crash))


if __name__ == "__main__":
    main()
