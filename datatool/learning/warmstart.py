"""``train --init-from RUN``: a new run that starts from a finished run's weights instead of
a fresh initialisation, for the labelling loop (a batch of new labels, a few epochs, not a
start over). The parent must be of the same preset (the same network: every field that
shapes it) and the same protocol (the same structures, in the same order), and must be done;
its selected (best) checkpoint is the starting point. The optimiser, the learning-rate
schedule, the epochs and the seed are the new run's own; its learning rate, unless given, is
a tenth of the preset's (``training.WARM_LR``: it fine-tunes, it does not start over).

A parent that trained (or selected) on an image that is in the new run's test set would
inflate the new run's scores: such a start is refused, over the whole lineage."""

from __future__ import annotations

from sqlalchemy import select

from datatool.core.catalogue import Run, RunStatus, SplitMember
from datatool.core.errors import UsageError
from datatool.core.protocol import Protocol
from datatool.core.workspace import Workspace
from datatool.learning.options import Subset
from datatool.learning.runs import lineage_in
from datatool.learning.splits import get_split

# the preset's fields that shape the network: weights move between runs that agree on them
NETWORK_FIELDS = (
    "layers",
    "width",
    "output_stride",
    "aux",
    "head_channels",
    "decoder",
    "click_decoder",
)


def classes_of(protocol: Protocol) -> list[list]:
    """The network's output classes after the background, as a run's config records them:
    [label value, structure name] in protocol order."""
    return [[s.value, s.name] for s in protocol.structures]


def _plain(value):
    """A config value as JSON keeps it (tuples become lists)."""
    return list(value) if isinstance(value, list | tuple) else value


def _text(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def differences(parent: dict, child: dict) -> list[str]:
    """What differs between a parent run's config and a new run's, among the preset, the
    network's fields and the protocol's classes (an older parent that did not record its
    classes is checked on its weights' shapes instead)."""
    out = []
    if parent.get("preset") != child.get("preset"):
        out.append(f"preset {parent.get('preset')} (this run: {child.get('preset')})")
    for name in NETWORK_FIELDS:
        a, b = _plain(parent.get(name)), _plain(child.get(name))
        if a is not None and b is not None and a != b:
            out.append(f"{name.replace('_', ' ')} {_text(a)} (this run: {_text(b)})")
    if "classes" in parent and parent["classes"] != child.get("classes"):
        a = ", ".join(str(c[1]) for c in parent["classes"])
        b = ", ".join(str(c[1]) for c in child.get("classes") or [])
        out.append(f"protocol structures [{a}] (this run: [{b}])")
    return out


def _trained_on(session, run: Run) -> set[int]:
    """The images a run fitted or selected on: its split's train and val (or, with a fold,
    every non-test member)."""
    q = select(SplitMember.image_id).where(
        SplitMember.split_id == run.split_id, SplitMember.subset != Subset.test
    )
    return set(session.scalars(q))


def _test_images(session, split_name: str) -> set[int]:
    split = get_split(session, split_name)
    q = select(SplitMember.image_id).where(
        SplitMember.split_id == split.id, SplitMember.subset == Subset.test
    )
    return set(session.scalars(q))


def parent_weights(ws: Workspace, parent_id: int, conf: dict, split_name: str, k: int) -> dict:
    """The state dict a new run (``conf``, on ``split_name``, ``k`` classes) starts from:
    run ``parent_id``'s best checkpoint, after the checks; a UsageError (one line, exit 2)
    naming what is wrong otherwise."""
    from datatool.learning.training import build_for, load_checkpoint

    where = f"--init-from {parent_id}"
    with ws.session() as s:
        run = s.get(Run, parent_id)
        if run is None:
            raise UsageError(f"{where}: there is no run {parent_id} ('datatool runs' lists them)")
        if run.status != RunStatus.done or run.best_checkpoint is None:
            raise UsageError(
                f"{where}: run {parent_id} is {run.status}, not done; finish it first "
                f"('datatool train --resume {parent_id}') or start from a finished run"
            )
        differs = differences(dict(run.config), conf)
        if differs:
            raise UsageError(
                f"{where}: run {parent_id} differs from this run in {'; '.join(differs)}; "
                "start from a run of the same preset and protocol"
            )
        digest = run.best_checkpoint
        test = _test_images(s, split_name)
        for ancestor in lineage_in(s, parent_id):
            row = s.get(Run, ancestor)
            seen = test & _trained_on(s, row) if row is not None else set()
            if seen:
                raise UsageError(
                    f"{where}: run {ancestor} trained on {len(seen)} image(s) of split "
                    f"{split_name!r}'s test set, which would inflate its scores; start from a "
                    "run whose training images are outside the test set (a split made with "
                    "--extend keeps the patients' sets)"
                )
    weights = load_checkpoint(ws, digest)["model"]
    own = build_for(conf, k).state_dict()
    wrong = [n for n, t in own.items() if n not in weights or weights[n].shape != t.shape]
    if wrong or len(weights) != len(own):
        raise UsageError(
            f"{where}: run {parent_id}'s weights do not fit this network (first: "
            f"{(wrong or sorted(set(weights) - set(own)))[0]}); start from a run of the same "
            "preset and protocol"
        )
    return weights


__all__ = ["NETWORK_FIELDS", "classes_of", "differences", "parent_weights"]
