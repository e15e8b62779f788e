"""``threegen remove KEY [KEY...]``: remove generations completely, as the UI's ``remove_generations``
job does (``defs/removal.py``): partition, ledger entry, versions and the blobs no other generation
uses. The whole request is checked first; a key that cannot be removed refuses it in one line."""

from __future__ import annotations

import argparse
import json

from .settings import Settings
from .stores import OpenedStore


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    from .defs.instance import get_instance
    from .defs.removal import remove_everywhere

    store = OpenedStore.from_settings(settings)
    report = remove_everywhere(get_instance(), store.artifacts(), store.ledger(), args.keys)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for key in report.removed:
        print(f"removed {key}")
    print(f"  {report.versions} version(s), {report.blobs_deleted} blob(s), {summary['freed_bytes']:,} bytes freed; "
          f"{report.blobs_shared} blob(s) shared with other generations kept")
    for note in report.notes:
        print(f"threegen: {note}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    remove = sub.add_parser("remove", help="remove generations completely: partition, ledger entry, versions, blobs")
    remove.add_argument("keys", nargs="+", metavar="KEY")
    remove.add_argument("--json", action="store_true")
    remove.set_defaults(run=cmd_remove)
