"""One shape for every competition's verdict on an output: the failures, each with the stage that found
it, its rule code (comp 2: the specification's codes) and a one-line detail, and what was measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Failure:
    stage: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule} ({self.stage}): {self.detail}"


@dataclass(frozen=True)
class CheckReport:
    ok: bool
    failures: tuple[Failure, ...] = ()
    metrics: dict = field(default_factory=dict)
    three: str = ""

    @property
    def rules(self) -> list[str]:
        return [f.rule for f in self.failures]

    def summary(self) -> str:
        return "passes every rule" if self.ok else "; ".join(str(f) for f in self.failures)

    def to_json(self) -> dict:
        return asdict(self)


def report(failures: list[Failure], metrics: dict | None = None) -> CheckReport:
    return CheckReport(not failures, tuple(failures), metrics or {})
