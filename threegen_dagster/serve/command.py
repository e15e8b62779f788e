"""``threegen serve``: the miner's batch API on ``0.0.0.0:10006`` (SN17-NOW.md section 4), the image's CMD.

The port is bound first (a port in use fails at once) and ``GET /health`` answers from then on; the
models warm up in a thread meanwhile (``warming_up``, then ``ready``). The batch is saved in the store
(``serve/batch.json``: local folder or S3, THREEGEN_STORE) after every change, so a restarted server
resumes it (``batch.py``). Generation runs in a second thread, one prompt at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from ..settings import Settings
from ..storage import StorageError
from .batch import BatchBook, ServeLimits, run_loop

DEFAULT_HOST, DEFAULT_PORT = "0.0.0.0", 10006
STATE = "serve/batch.json"
DEFAULTS = ServeLimits()


def add_parser(sub) -> None:
    cmd = sub.add_parser("serve", help="SN17's miner batch API (GET /health, /status, /results; POST /generate) "
                                       "on the round pipeline")
    cmd.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}, as validators "
                                                          "expect; 127.0.0.1 for loopback only)")
    cmd.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    cmd.add_argument("--max-prompts", type=int, default=DEFAULTS.max_prompts, help="prompts a batch may hold")
    cmd.add_argument("--max-file-bytes", type=int, default=DEFAULTS.file_bytes, help="largest output in the ZIP")
    cmd.add_argument("--max-zip-bytes", type=int, default=DEFAULTS.zip_bytes, help="largest results ZIP")
    cmd.set_defaults(run=cmd_serve)


def _limits(args: argparse.Namespace) -> ServeLimits:
    for name in ("max_prompts", "max_file_bytes", "max_zip_bytes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"threegen serve: --{name.replace('_', '-')} must be at least 1")
    return ServeLimits(max_prompts=min(args.max_prompts, DEFAULTS.zip_entries - 1), file_bytes=args.max_file_bytes,
                       zip_bytes=args.max_zip_bytes)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from ..worker_http import allowed_hosts, bind
    from .http import make_app, serve
    from .pipeline import PipelineGenerator

    limits = _limits(args)
    sock = bind(args.host, args.port)
    sock.listen(128)  # connections wait in the backlog from now on, until uvicorn takes them
    generator = PipelineGenerator(settings)
    store = generator.opened.store()
    try:
        saved = json.loads(store.read(STATE)) if store.exists(STATE) else None
    except (StorageError, ValueError) as exc:
        print(f"threegen serve: the saved batch {store.uri(STATE)} cannot be read ({exc}); starting without it",
              file=sys.stderr, flush=True)
        saved = None
    book = BatchBook(lambda batch: store.write(STATE, json.dumps(batch, indent=1).encode()), saved, limits,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    threading.Thread(target=run_loop, args=(book, generator), name="threegen-serve-generation", daemon=True).start()
    shown = f"[{args.host}]" if ":" in args.host else args.host
    resumed = f"; resuming batch {book.batch.id} ({book.batch.done}/{len(book.batch.stems)} done)" if book.resumed else ""
    print(f"threegen serve: competition {settings.competition} ({generator.ext}), store {settings.store}, "
          f"serving on http://{shown}:{sock.getsockname()[1]} (the model stages warming up{resumed}); "
          f"Ctrl-C stops it", flush=True)
    app = make_app(book, generator.read, generator.ext, allowed_hosts(args.host))
    serve(app, sock, settings.worker_read_timeout_s)
    return 0
