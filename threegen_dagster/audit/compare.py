"""The regenerated outputs against the round's published ones, stem by stem: determinism (the repeats'
bytes identical) and likeness to what was published (the same bytes, else the judge-style renders of both
compared by pixels and, with an ``Embedder``, by embeddings). The published bytes are fetched from their
public URL as a validator fetches them (bounded, no redirects) only when their sha256 differs. No Dagster."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..rounds.render import JudgeRenderer, RenderError
from .renders import Embedder, embedding_similarity, pixel_similarity, white_views


@dataclass
class StemComparison:
    stem: str
    regenerated: int  # repeats that delivered it
    deterministic: bool  # every delivered repeat gave the same bytes
    identical_to_published: bool
    pixel_similarity: float | None = None  # 1.0 when identical (the same bytes render the same)
    embedding_similarity: float | None = None
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def compare(outputs: list[dict[str, bytes]], published: dict[str, tuple[str, str]],
            fetch: Callable[[str], bytes], kind: str, renderer: JudgeRenderer | None = None,
            embedder: Embedder | None = None, max_rendered: int = 32) -> list[StemComparison]:
    """One row per published stem: ``published`` maps stem -> (URL, sha256); ``outputs`` is each repeat's
    stem -> bytes. Renders at most ``max_rendered`` differing stems (none without a renderer)."""
    rows, rendered = [], 0
    for stem, (url, digest) in sorted(published.items()):
        versions = [out[stem] for out in outputs if stem in out]
        if not versions:
            rows.append(StemComparison(stem, 0, False, False, 0.0, None, "not regenerated in any repeat"))
            continue
        hashes = {hashlib.sha256(v).hexdigest() for v in versions}
        row = StemComparison(stem, len(versions), len(hashes) == 1, digest in hashes)
        if row.identical_to_published and row.deterministic:
            row.pixel_similarity, row.note = 1.0, "the published bytes, regenerated"
            row.embedding_similarity = 1.0 if embedder else None
        elif renderer is None or rendered >= max_rendered:
            row.note = "differs from the published bytes; not rendered" if not row.identical_to_published \
                else "repeats differ; not rendered"
        else:
            rendered += 1
            try:
                mine = white_views(renderer, versions[-1] if not row.identical_to_published else
                                   next(v for v in versions if hashlib.sha256(v).hexdigest() != digest), kind)
                theirs = white_views(renderer, fetch(url), kind)
            except (RenderError, ValueError, OSError) as exc:
                row.pixel_similarity, row.note = 0.0, f"not comparable: {str(exc)[:300]}"
            else:
                row.pixel_similarity = round(pixel_similarity(mine, theirs), 4)
                if embedder is not None:
                    row.embedding_similarity = round(embedding_similarity(embedder, mine, theirs), 4)
                row.note = "renders compared (bytes differ)"
        rows.append(row)
    return rows


def summary(rows: list[StemComparison]) -> dict:
    sims = [r.pixel_similarity for r in rows if r.pixel_similarity is not None]
    return {"stems": len(rows), "deterministic": sum(r.deterministic for r in rows),
            "identical_to_published": sum(r.identical_to_published for r in rows),
            "min_pixel_similarity": round(min(sims), 4) if sims else None,
            "mean_pixel_similarity": round(sum(sims) / len(sims), 4) if sims else None}
