"""``threegen validators`` and ``threegen puller``: the legacy SN17 protocol's validator records and
the task puller (pull tasks from validators into the store; the SN17 sensors run and submit them)."""

from __future__ import annotations

import argparse
import json
import time

from .keys import PromptError
from .settings import Settings
from .stores import OpenedStore


def cmd_validators(args: argparse.Namespace, settings: Settings) -> int:
    from .sn17.validators import ValidatorBook, records_table

    book = ValidatorBook(OpenedStore.from_settings(settings).store())
    if args.blacklist is not None or args.unblacklist is not None:
        uid, on = (args.blacklist, True) if args.blacklist is not None else (args.unblacklist, False)
        book.set_blacklisted(uid, on)
        if not args.json:
            print(f"validator {uid} {'blacklisted' if on else 'no longer blacklisted'}")
    rows = records_table(book, settings.validators, time.time())
    if args.json:
        print(json.dumps({"blacklist": sorted(book.blacklist(settings.validators)), "validators": rows}, indent=1))
        return 0
    print(f"manual blacklist: {', '.join(map(str, sorted(book.blacklist(settings.validators)))) or 'none'}")
    if not rows:
        print("no validator records yet")
    for r in rows:
        print(f"  uid {r['uid']:>4}  {r['hotkey'][:12]:<12}  pulls {r['pulls']:>4}  tasks {r['tasks']:>4}  "
              f"submitted {r['submissions']:>4} (accepted {r['accepted']}, empty {r['empty']})  "
              f"success {r['success_rate'] if r['success_rate'] is not None else '-'}  "
              f"mean {r['mean_response_s'] if r['mean_response_s'] is not None else '-'} s  "
              f"cooldown {r['cooldown_s']} s  {r['blacklisted']}")
    return 0


def _static_neuron(spec: str):
    """'UID:HOTKEY@IP:PORT' -> Neuron (a validator given by hand instead of the metagraph)."""
    from .sn17.validators import Neuron

    try:
        uid, rest = spec.split(":", 1)
        hotkey, address = rest.split("@", 1)
        ip, port = address.rsplit(":", 1)
        return Neuron(int(uid), hotkey, float("inf"), ip, int(port))
    except ValueError:
        raise PromptError(f"--validator {spec!r}: use UID:HOTKEY@IP:PORT") from None


def cmd_puller(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from .sn17.signing import open_wallet
    from .sn17.client import MinerClient
    from .sn17.puller import TaskQueue, neurons_from_metagraph, pull_once, run_forever
    from .sn17.validators import ValidatorBook

    store = OpenedStore.from_settings(settings).store()
    wallet = open_wallet(**{k.removeprefix('wallet_'): v for k, v in settings.sn17.items() if k.startswith('wallet_')})
    if args.validator:
        static = [_static_neuron(spec) for spec in args.validator]
        neurons = lambda: static  # noqa: E731
    else:
        import bittensor as bt

        subtensor = bt.Subtensor(network=args.network)
        neurons = lambda: neurons_from_metagraph(subtensor.metagraph(args.netuid))  # noqa: E731
    print(f"puller: hotkey {wallet.hotkey.ss58_address}, store {store.location}, "
          f"{'validators given by hand' if args.validator else f'netuid {args.netuid} on {args.network}'}", flush=True)

    async def main() -> None:
        async with MinerClient(wallet, ValidatorBook(store), settings.validators) as client:
            if args.once:
                print(json.dumps(await pull_once(client, neurons(), TaskQueue(store)), default=str))
            else:
                await run_forever(client, neurons, TaskQueue(store), interval=args.interval,
                                  on_round=lambda summary: print(json.dumps(summary, default=str), flush=True))

    asyncio.run(main())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    val = sub.add_parser("validators", help="SN17 validator records and the manual blacklist")
    val.add_argument("--blacklist", type=int, metavar="UID", help="never pull from this validator")
    val.add_argument("--unblacklist", type=int, metavar="UID", help="take it off the blacklist")
    val.add_argument("--json", action="store_true")
    val.set_defaults(run=cmd_validators)
    pull = sub.add_parser("puller", help="pull SN17 tasks from validators into the store (the sensor runs them)")
    pull.add_argument("--network", default="finney", help="subtensor network (default finney)")
    pull.add_argument("--netuid", type=int, default=17)
    pull.add_argument("--validator", action="append", metavar="UID:HOTKEY@IP:PORT",
                      help="pull from this validator instead of the metagraph's (repeatable)")
    pull.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (cooldowns permitting)")
    pull.add_argument("--once", action="store_true", help="one round, then print its summary")
    pull.set_defaults(run=cmd_puller)
