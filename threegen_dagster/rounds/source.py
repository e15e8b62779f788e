"""Where the round state is read from: the state repository's raw files over http(s) (GitHub's
``raw.githubusercontent.com/404-Repo/404-active-competition/main``) or a local folder (a clone, or a
test's). Every read is bounded: at most ``max_bytes`` (never read past it), a timeout per try, a few
tries with a pause for what may pass (connection errors, timeouts, HTTP 5xx and 429); a missing file or
another 4xx is not tried again. Each file is checked against its schema (``state.py``). No Dagster."""

from __future__ import annotations

import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import http_get
from .state import (Leaders, PromptUrl, RoundFileError, RoundState, Schedule, Seed, Submissions, parse,
                    parse_prompts)

DEFAULT_BASE = "https://raw.githubusercontent.com/404-Repo/404-active-competition/main"


class FetchError(RoundFileError):
    """A file that could not be read (missing, too large, unreachable); the message says which and why."""


def fetch_url(url: str, *, max_bytes: int, timeout_s: float, tries: int = 3, pause_s: float = 1.0,
              what: str = "", redirects: bool = True) -> bytes:
    """The body of ``url`` (http or https), at most ``max_bytes``, each try whole within ``timeout_s``
    (``http_get``: a server dripping bytes is cut off too); FetchError otherwise."""
    name = what or url
    if urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{name}: not an http(s) URL")
    last = ""
    for attempt in range(1, tries + 1):
        try:
            return http_get.get(url, max_bytes=max_bytes, timeout_s=timeout_s, redirects=redirects,
                                headers={"User-Agent": "threegen-dagster"})
        except http_get.TooLarge as exc:
            raise FetchError(f"{name}: {exc}") from None
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code} {exc.reason}"
            if exc.code == 404:
                raise FetchError(f"{name}: not found (HTTP 404)") from None
            if exc.code < 500 and exc.code != 429:
                raise FetchError(f"{name}: {last}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt < tries:
            time.sleep(pause_s * attempt)
    raise FetchError(f"{name}: unreachable after {tries} tries ({last})")


def read_local(root: Path, relative: str, max_bytes: int) -> bytes:
    """``root/relative`` (a regular file inside ``root``, links resolved), at most ``max_bytes``."""
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise FetchError(f"{relative}: outside the state folder {base}")
    if not path.exists():
        raise FetchError(f"{relative}: not found in {base}")
    if not path.is_file():
        raise FetchError(f"{relative}: not a regular file")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FetchError(f"{relative}: more than {max_bytes:,} bytes; the limit is {max_bytes:,}")
    return data


@dataclass(frozen=True)
class RoundSource:
    """The round state at ``base``: an http(s) URL of the repository's raw files, or a folder."""

    base: str = DEFAULT_BASE
    max_bytes: int = 4 * 2**20
    timeout_s: float = 20.0
    tries: int = 3
    pause_s: float = 1.0

    def read(self, relative: str) -> bytes:
        if self.base.startswith(("http://", "https://")):
            return fetch_url(f"{self.base.rstrip('/')}/{relative}", max_bytes=self.max_bytes,
                             timeout_s=self.timeout_s, tries=self.tries, pause_s=self.pause_s, what=relative)
        return read_local(Path(self.base), relative, self.max_bytes)

    def state(self) -> RoundState:
        return parse(RoundState, self.read("state.json"), "state.json")

    def schedule(self, number: int) -> Schedule:
        name = f"rounds/{number}/schedule.json"
        return parse(Schedule, self.read(name), name)

    def seed(self, number: int) -> int:
        name = f"rounds/{number}/seed.json"
        return parse(Seed, self.read(name), name).seed

    def prompts(self, number: int) -> list[PromptUrl]:
        name = f"rounds/{number}/prompts.txt"
        return parse_prompts(self.read(name), name)

    def submissions(self, number: int) -> Submissions:
        name = f"rounds/{number}/submissions.json"
        return parse(Submissions, self.read(name), name)

    def leaders(self) -> Leaders:
        return parse(Leaders, self.read("leader.json"), "leader.json")
