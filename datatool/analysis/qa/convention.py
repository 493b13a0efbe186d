"""Which side of the image shows the patient's lateral side, learned from the labels.

Where the probe marker points is a habit of a site or an operator, not a standard, so the
lateral/medial relations of the protocol are checked against the workspace's own display
convention: every label that holds both structures of a lateral/medial relation *votes* for the
image side its centroids put the lateral side on, and an image is checked against the majority
of the votes of its series (an operator keeps one habit through a series), else of its device
and leg, else of its leg, else against the protocol's ``lateral_side`` (the prior, while too few
labels have voted). An image whose labels all vote against that convention looks mirrored: one
flag for the image, not one per relation and label.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from datatool.core.protocol import Protocol, Relation

LATERAL = ("lateral to", "medial to")
MIN_VOTES = 20  # votes of a leg (or a device and leg) before its majority replaces the prior
MIN_SERIES_VOTES = 6  # votes of a series before its own majority counts
SERIES_MAJORITY = 0.6  # ... and the share its majority needs
OTHER = {"left": "right", "right": "left"}


def lateral_relations(protocol: Protocol) -> list[Relation]:
    return [r for r in protocol.relations if r.relation in LATERAL]


def vote(relation: Relation, x: float, other_x: float) -> str | None:
    """The image side ("left" or "right") on which ``relation`` puts the lateral side, given
    the centroids' columns of its structure (``x``) and of the other (``other_x``); None when
    they lie in the same column (less than a pixel apart)."""
    if abs(x - other_x) < 1.0:
        return None
    structure_left = x < other_x
    # "A lateral to B" with A on the image's left: the lateral side shows on the left
    lateral_left = structure_left if relation.relation == "lateral to" else not structure_left
    return "left" if lateral_left else "right"


def label_vote(votes: Iterable[str | None]) -> str | None:
    """One label's vote: the majority of its relations' votes (None on a tie or none)."""
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return None
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


@dataclass(frozen=True)
class Where:
    """What is known of an image for its convention."""

    leg: str | None
    series: int
    device: tuple[str | None, str | None]


@dataclass(frozen=True)
class Learned:
    """The convention an image is checked against, and where it comes from."""

    lateral_side: str | None  # "left" or "right"; None: not checked (unknown leg)
    source: str  # "series", "device", "workspace" or "protocol"
    votes: int  # the votes behind it (0 for the protocol)
    share: float | None  # the majority's share of them


@dataclass
class Convention:
    """The votes of the workspace's labels, by series, by device and leg, and by leg."""

    protocol: Protocol
    by_series: dict[int, Counter]
    by_device: dict[tuple, Counter]
    by_leg: dict[str, Counter]

    @classmethod
    def learn(cls, protocol: Protocol, votes: Iterable[tuple[Where, str]]) -> Convention:
        by_series: dict[int, Counter] = defaultdict(Counter)
        by_device: dict[tuple, Counter] = defaultdict(Counter)
        by_leg: dict[str, Counter] = defaultdict(Counter)
        for where, side in votes:
            if not where.leg:
                continue
            leg = where.leg.upper()
            by_series[where.series][side] += 1
            by_device[(where.device, leg)][side] += 1
            by_leg[leg][side] += 1
        return cls(protocol, dict(by_series), dict(by_device), dict(by_leg))

    def for_image(self, where: Where) -> Learned:
        if not where.leg:
            return Learned(None, "protocol", 0, None)
        leg = where.leg.upper()
        series = self.by_series.get(where.series)
        if series:
            n = sum(series.values())
            side, top = series.most_common(1)[0]
            if n >= MIN_SERIES_VOTES and top / n >= SERIES_MAJORITY:
                return Learned(side, "series", n, top / n)
        for counts, source in (
            (self.by_device.get((where.device, leg)), "device"),
            (self.by_leg.get(leg), "workspace"),
        ):
            if counts and sum(counts.values()) >= MIN_VOTES:
                n = sum(counts.values())
                side, top = counts.most_common(1)[0]
                if top * 2 > n:
                    return Learned(side, source, n, top / n)
        return Learned(self.protocol.lateral_image_side(leg), "protocol", 0, None)

    def protocol_note(self) -> str | None:
        """One line when the labels of a leg (at least MIN_VOTES of them) mostly show the
        lateral side on the other side of the image from the protocol's ``lateral_side``."""
        relations = lateral_relations(self.protocol)
        if not relations:
            return None
        found = []
        learned = {}
        for leg in sorted(self.by_leg):
            counts = self.by_leg[leg]
            n = sum(counts.values())
            stated = self.protocol.lateral_image_side(leg)
            side, top = counts.most_common(1)[0]
            learned[leg] = side if n >= MIN_VOTES and top * 2 > n else stated
            if stated and n >= MIN_VOTES and side != stated and top * 2 > n:
                found.append(
                    f"{100 * top / n:.0f} % of {n} labels of {leg} legs show it on the image's "
                    f"{side}, not the {stated}"
                )
        if not found:
            return None
        legs = ", ".join(
            f"{leg}: {learned.get(leg) or side}"
            for leg, side in (dict(self.protocol.lateral_side) | learned).items()
            if side
        )
        rules = "; ".join(f"'{r}'" for r in relations)
        return (
            f"{rules}: {'; '.join(found)}, so the labels were checked against their own "
            f"convention (no flags for it): if that is the study's display, set "
            f"lateral_side: {{{legs}}} in protocol {self.protocol.name}"
        )

    def series_note(self, images: dict[int, Where]) -> str | None:
        """One line on the series checked against their own convention, mirrored from their
        leg's."""
        mirrored = set()
        for where in images.values():
            learned = self.for_image(where)
            if learned.source != "series" or not where.leg:
                continue
            leg = Where(where.leg, -1, where.device)  # the leg's convention, without the series
            if learned.lateral_side != self.for_image(leg).lateral_side:
                mirrored.add(where.series)
        if not mirrored:
            return None
        n_images = sum(1 for w in images.values() if w.series in mirrored)
        return (
            f"{len(mirrored)} series ({n_images} images) show the lateral side mirrored from the "
            "rest of their leg's labels (another operator's display habit?): checked against "
            "their own series' convention"
        )


def learn_from(
    protocol: Protocol,
    images: dict[int, Where],
    labels: Iterable[tuple[int, int]],
    centroids: dict[int, dict[int, tuple[float, float]]],
) -> tuple[dict[int, Learned], dict[int, dict], list[str]]:
    """Learn the convention from the ``labels`` ((annotation, image) pairs, with the
    ``centroids`` of their structures by value) and check every image against it. Returns the
    convention of each image, the images whose labels all vote against it (image -> evidence:
    they look mirrored) and the notes (the protocol's convention against the labels', the
    series checked against their own)."""
    relations = [
        (r, protocol.by_label(r.structure).value, protocol.by_label(r.other).value)
        for r in lateral_relations(protocol)
    ]
    if not relations:
        return {}, {}, []
    votes: dict[int, list[tuple[int, str]]] = defaultdict(list)  # image -> (annotation, vote)
    for annotation_id, image_id in labels:
        c = centroids.get(annotation_id, {})
        side = label_vote(vote(r, c[a][0], c[b][0]) for r, a, b in relations if a in c and b in c)
        if side is not None:
            votes[image_id].append((annotation_id, side))
    convention = Convention.learn(
        protocol, ((images[i], side) for i, vs in votes.items() for _, side in vs)
    )
    learned = {i: convention.for_image(w) for i, w in images.items()}
    mirrored = {}
    for image_id, vs in votes.items():
        side = learned[image_id].lateral_side
        if side is not None and all(v != side for _, v in vs):
            lc = learned[image_id]
            mirrored[image_id] = {
                "annotation": min(a for a, _ in vs),
                "relations": [str(r) for r, _, _ in relations],
                "labels": len(vs),
                "labels_show": OTHER[side],
                "lateral_side": side,
                "convention": lc.source,
                "votes": lc.votes,
                "share": None if lc.share is None else round(lc.share, 3),
                "leg": images[image_id].leg,
            }
    notes = [n for n in (convention.protocol_note(), convention.series_note(images)) if n]
    return learned, mirrored, notes
