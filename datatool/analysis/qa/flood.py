"""No rule floods the queue: a rule that would flag more than a share of all labels checked
tells about the rule (a threshold, the protocol, the workspace's habits), not about the
labels, so it becomes one note instead of flags."""

from __future__ import annotations

from collections import defaultdict

from datatool.analysis import shape
from datatool.analysis.qa.rules import _Found
from datatool.core.catalogue import FlagReason

MAX_SHARE = shape.MAX_FLAG_SHARE  # a rule may flag at most this share of the labels checked
MIN_LABELS = 20  # ... once there are this many labels (below, every flag is kept)
# what a reviewer must see whatever their number: a label of another image, a mirrored image
NEVER_CAPPED = (FlagReason.wrong_image, FlagReason.mirrored)


def rule_of(f: _Found) -> str:
    """The rule that found a flag: its reason and structure, or relation for anatomy."""
    if f.reason == FlagReason.anatomy:
        return f"anatomy '{f.evidence.get('relation')}'"
    return f"{f.reason.value} on {f.structure}"


def cap(
    found: list[_Found],
    labels: int,
    max_share: float = MAX_SHARE,
    seen: dict[FlagReason, int] | None = None,
) -> tuple[list[_Found], list[str]]:
    """The flags of the rules that stay under ``max_share`` of the ``labels`` checked, and one
    note per rule over it (the share it saw). A reason that can only judge some of the labels
    (``seen``: temporal, the labels of cine loops) is counted against those it judged."""
    flagged: dict[str, set[int]] = defaultdict(set)
    judged: dict[str, int] = {}
    for f in found:
        if f.reason not in NEVER_CAPPED:
            flagged[rule_of(f)].add(f.annotation_id)
            judged[rule_of(f)] = (seen or {}).get(f.reason, labels)
    over = {
        rule
        for rule, ids in flagged.items()
        if judged[rule] >= MIN_LABELS and len(ids) > max_share * judged[rule]
    }
    notes = [
        f"{rule}: would flag {len(flagged[rule])} of {judged[rule]} labels "
        f"({100 * len(flagged[rule]) / judged[rule]:.0f} %, over the {100 * max_share:.0f} % a "
        "rule may flag, --max-flag-share): a note about the rule, not flags; check its "
        "threshold or the protocol"
        for rule in sorted(over)
    ]
    return [f for f in found if f.reason in NEVER_CAPPED or rule_of(f) not in over], notes
