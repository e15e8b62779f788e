"""One line that says why something failed, from a chain of errors.

Dagster reports a failed step as ``Execution of step "X" failed.`` and keeps the reason inside
its error info: the exception that stopped the step, wrapped in Dagster's own errors
(``DagsterExecutionStepExecutionError``, ``...HandleOutputError``), each link's ``cause``
(``raise ... from``) or ``context`` (raised while handling another). ``root_cause`` follows that
chain to the innermost error and prints it as ``Type: message`` on one line; when an error of
this project wraps it (a ``StorageError`` around an ``OSError``, say), that error's message
leads, since it names the object and what to do. It takes Python exceptions and Dagster's
``SerializableErrorInfo`` alike (read by attribute: no Dagster imports).
"""

from __future__ import annotations

from dataclasses import dataclass

PROJECT_MODULE = "threegen_dagster"
MAX_PART_CHARS = 300


class InstanceUnavailable(RuntimeError):
    """The Dagster instance cannot be opened or written (a full disk, a locked or broken database)."""


@dataclass(frozen=True)
class Link:
    module: str  # "" for builtins
    cls_name: str
    message: str

    def line(self) -> str:
        text = " ".join(self.message.split())
        if len(text) > MAX_PART_CHARS:
            text = text[:MAX_PART_CHARS - 1] + "…"
        return f"{self.cls_name}: {text}" if text else self.cls_name


def _link(error) -> Link:
    if isinstance(error, BaseException):
        cls = type(error)
        module = "" if cls.__module__ == "builtins" else cls.__module__
        return Link(module, cls.__name__, str(error))
    # SerializableErrorInfo: message is traceback.format_exception_only's "pkg.mod.Cls: text\n"
    cls_name, message = error.cls_name or "Error", error.message or ""
    head, sep, rest = message.partition(": ")
    qualified = head.strip()
    if sep and (qualified == cls_name or qualified.endswith("." + cls_name)):
        return Link(qualified[: -len(cls_name)].rstrip("."), cls_name, rest)
    if message.strip() == qualified and qualified.endswith(cls_name):  # an error with no message
        return Link(qualified[: -len(cls_name)].rstrip("."), cls_name, "")
    return Link("", cls_name, message)


def _next(error):
    if isinstance(error, BaseException):
        if error.__cause__ is not None:
            return error.__cause__
        return None if error.__suppress_context__ else error.__context__
    return error.cause if error.cause is not None else error.context


def chain(error) -> list[Link]:
    """Outermost first; stops on a cycle."""
    links, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        links.append(_link(error))
        error = _next(error)
    return links


def root_cause(error) -> str:
    """``Type: message`` of the innermost error; led by this project's outermost error around it."""
    links = chain(error)
    if not links:
        return "unknown error"
    root = links[-1]
    ours = next((link for link in links[:-1] if link.module.startswith(PROJECT_MODULE)), None)
    return f"{ours.line()} (caused by {root.line()})" if ours else root.line()
