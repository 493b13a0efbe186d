"""Gold-standard tasks: images that already have a reference label, mixed into a rater's queue
as ordinary tasks (as CVAT's ground-truth jobs and "honeypots" do), so that the rater's label
of them can be scored against the reference (``analysis.rater_quality``).

Rules:

* The reference is a rater: a consensus (``consensus:staple``, the default) or a named human
  rater. Its latest label version of each image at hand-out time is recorded in ``gold_tasks``
  with the rater, the tool and the seed; a later consensus version does not change what the
  rater is scored against.
* Candidates are the images the reference has labelled and the rater has not: no label of
  theirs, no Label Studio task in their projects, not an ordinary image of this push/export,
  not already gold for them. ``N`` seeded draws among them, without replacement.
* ``N`` is the number of gold images the rater holds in all (any tool): images handed before
  count, so a re-run adds none and a larger N adds the difference.
* A gold task looks like every other one: the same data, name and file layout; nothing written
  for the rater (task data, export marker, file names) says which are gold, and a push that
  mixes in gold orders all its new tasks by a seeded shuffle, so gold ones do not come as a
  block. Only the catalogue knows.
* A rater's labels of their gold images are left out of agreement samples and consensus
  unless asked (``include_gold``): they would count a label made to be checked as an
  independent rating, and let the answer change the reference it is scored against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import (
    Annotation,
    GoldTask,
    Image,
    LabelStudioProject,
    LabelStudioTask,
    Rater,
    RaterKind,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater, latest_annotations_query
from datatool.labels.matching import image_name

DEFAULT_REFERENCE = "consensus:staple"
TOOLS = ("labelstudio", "itksnap")
T = TypeVar("T")


@dataclass
class GoldHanding:
    """What a push or export with ``--gold N`` hands the rater."""

    reference: str  # the reference rater's name
    seed: int
    queue: list[int]  # the images of this push/export: ordinary and gold, by id
    gold: list[int]  # of them, the rater's gold images of this tool (old and new)
    new: int  # gold images chosen now (the others were handed before)
    total: int  # the rater's gold images in all tools, after this one

    def mixed(self, items: Sequence[T]) -> list[T]:
        """``items`` in a seeded random order, so gold tasks do not come as one block."""
        order = np.random.default_rng(self.seed).permutation(len(items))
        return [items[int(k)] for k in order]


def reference_rater(session: Session, reference: str, rater: Rater) -> Rater:
    """The rater whose labels are the answers; refuses the rater themself and models."""
    ref = session.scalar(select(Rater).where(Rater.name == reference))
    if ref is None:
        hint = (
            "run 'datatool consensus' first"
            if reference.startswith("consensus:")
            else f"run 'datatool rater add {reference}' and sync their labels"
        )
        raise UsageError(
            f"--gold-reference {reference}: no such rater in this catalogue; {hint}, or name "
            "another reference (consensus:METHOD or a rater)"
        )
    if ref.id == rater.id:
        raise UsageError(f"--gold-reference {reference}: a rater cannot be their own reference")
    if ref.kind == RaterKind.model:
        raise UsageError(
            f"--gold-reference {reference}: a model's labels are drafts, not a reference; name "
            "a consensus (consensus:METHOD) or a rater"
        )
    return ref


def hand_gold(
    ws: Workspace,
    rater: str,
    n: int,
    reference: str,
    seed: int,
    tool: str,
    wanted: Iterable[int] | None,
) -> GoldHanding:
    """Choose and record the rater's gold images (see the module docstring), in one
    transaction; returns the images to push or export (``queue``).

    ``wanted``: the ordinary images asked for (None: every image except those the reference
    has labelled and the rater has not, which are the gold pool)."""
    if n < 1:
        raise UsageError("--gold takes a number of images, 1 or more")
    if tool not in TOOLS:
        raise ValueError(f"unknown tool {tool!r}")
    with ws.session() as s:
        r = get_rater(s, rater)
        if r.kind != RaterKind.human:
            raise UsageError(f"--gold is for human raters; {r.name} is a {r.kind} rater")
        ref = reference_rater(s, reference, r)
        answers = {a.image_id: a.id for a in s.scalars(latest_annotations_query([ref.id]))}
        if not answers:
            raise DatatoolError(
                f"--gold-reference {ref.name} has no labels yet: nothing to hand as gold"
            )
        labelled = set(s.scalars(select(Annotation.image_id).where(Annotation.rater_id == r.id)))
        queued = set(
            s.scalars(
                select(LabelStudioTask.image_id)
                .join(LabelStudioProject, LabelStudioTask.project_id == LabelStudioProject.id)
                .where(LabelStudioProject.rater_id == r.id)
            )
        )
        handed = {
            g.image_id: g for g in s.scalars(select(GoldTask).where(GoldTask.rater_id == r.id))
        }
        pool = set(answers) - labelled - queued - set(handed)
        images = set(s.scalars(select(Image.id)))
        if wanted is None:
            ordinary = images - pool - set(handed)
        else:
            ordinary = set(wanted)
            if ordinary - images:
                raise UsageError(
                    "no such image(s) in this catalogue: "
                    + ", ".join(image_name(i) for i in sorted(ordinary - images)[:5])
                    + " (see 'datatool images')"
                )
        candidates = sorted(pool - ordinary)
        need = max(0, n - len(handed))
        if need > len(candidates):
            before = f" ({len(handed)} handed before)" if handed else ""
            most = len(candidates) + len(handed)
            raise DatatoolError(
                f"--gold {n}: only {len(candidates)} more images{before} have a label of "
                f"{ref.name} and are new to rater {r.name} (not labelled by them, not in their "
                f"queue, not among the images asked for): use --gold {most} or fewer, or "
                "another --gold-reference"
            )
        rng = np.random.default_rng(seed)
        chosen = (
            sorted(int(i) for i in rng.choice(np.asarray(candidates), size=need, replace=False))
            if need
            else []
        )
        for image_id in chosen:
            s.add(
                GoldTask(
                    rater_id=r.id,
                    image_id=image_id,
                    reference_annotation_id=answers[image_id],
                    tool=tool,
                    seed=seed,
                )
            )
        gold = sorted({i for i, g in handed.items() if g.tool == tool} | set(chosen))
        if chosen:
            audit(
                s,
                f"gold {tool}",
                "hand out",
                rater=r.name,
                reference=ref.name,
                seed=seed,
                images=chosen,
            )
        return GoldHanding(
            reference=ref.name,
            seed=seed,
            queue=sorted(ordinary | set(gold)),
            gold=gold,
            new=len(chosen),
            total=len(handed) + len(chosen),
        )


def gold_pairs(session: Session) -> set[tuple[int, int]]:
    """(image id, rater id) of every gold task: the labels to keep out of agreement samples and
    consensus unless asked."""
    return {(i, r) for i, r in session.execute(select(GoldTask.image_id, GoldTask.rater_id))}


def without_gold(session: Session, annotations: list[Annotation]) -> tuple[list[Annotation], int]:
    """``annotations`` less the raters' labels of their gold images, and how many those were."""
    pairs = gold_pairs(session)
    kept = [a for a in annotations if (a.image_id, a.rater_id) not in pairs]
    return kept, len(annotations) - len(kept)
