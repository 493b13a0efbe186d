"""``datatool qa``: a review queue of suspicious labels.

:func:`run_qa` checks the latest label version of every human rater and consensus (or of the
raters named) and keeps one flag per (label version, structure, reason) in the catalogue
(``qa_flags``), each with the numbers behind it and a severity (``shape``: how far the evidence
lies past its threshold, 1 for a clear-cut case). The checks, per structure:

* ``model_disagreement``: Dice with the run's whole-image draft below ``model_dice_below``, or
  present in one and absent in the other (needs ``run``);
* ``rater_disagreement``: Dice with another human rater's latest label below
  ``rater_dice_below``, or present for one and absent for the other (the lower Dice when there
  are several other raters); or centroids further apart, or equivalent radii more different,
  than the workspace's rater pairs (robust z beyond ``pair_z_above``; :mod:`.pairs`);
* ``swap``: the structure lies on the other rater's (or the model's) *different* structure far
  more than on its own (at least half of it, and three times as much);
* ``components``, ``holes``, ``edge``: more pieces than the protocol allows, holes in a solid
  structure, a structure that lies in the view touching the image edge or the blanked area;
* ``size``: the area (mm², pixels for uncalibrated images) far from the structure's median over
  every latest human and consensus label of the workspace (robust z-score beyond
  ``size_z_above``);
* ``anatomy``: a relation of the protocol broken on the centroids (superficial, deep, lateral,
  medial; the image's lateral side learned from the labels per series, device and leg, the
  protocol's ``lateral_side`` the prior: :mod:`.convention`).

And per label or image: ``wrong_image``, the label fits another image of the patient far better
than its own (:mod:`.wrongimage`); ``mirrored``, every label of the image reverses the learned
lateral side (one flag for the image). And per frame of a cine loop: ``temporal``, a
structure missing in a frame while present in the frames on both sides, or whose centroid or
size lies off its neighbouring frames' course beyond the loop's usual frame-to-frame change
(:mod:`.temporal`); a cine's frames are otherwise images like stills for every check. A rule
that would flag more than ``max_flag_share`` of the labels it judged is a note instead
(:mod:`.flood`). The queue ranks what a reviewer must see first
(a structure present for one rater and absent for the other, a swap, a wrong image) before
shape and size oddities (:mod:`.queue`).

Re-running adds no duplicate: an open flag found again gets its evidence refreshed; a flag a
reviewer closed stays closed; an open flag that the same check no longer finds on the same label
version is *cleared* (and reopened if it comes back). A new version of a label closes the open
flags of the old one (``labels.annotations``), and the checks sweep up any left. Everything is
audited. The masks are read once per image, in worker processes for large workspaces; the
analysis package does not import the model, so the caller passes the function that makes the
run's drafts (``learning.inference.ensure_drafts``).

The steps, one module each: :mod:`.inputs` reads the labels and what is known of their images,
:mod:`.measure` reads the masks once and measures them, :mod:`.rules` turns the measures into
flags (with :mod:`.convention`, :mod:`.pairs`, :mod:`.wrongimage`, :mod:`.temporal` and
:mod:`.flood`),
:mod:`.record` writes them, :mod:`.check` runs the steps (``run_qa``), :mod:`.queue`
ranks and resolves the flags and :mod:`.export` writes the queue as CSV and thumbnails.
"""

from datatool.analysis.qa.check import QARun, ReasonCount, run_qa
from datatool.analysis.qa.export import QAReport, write_report
from datatool.analysis.qa.queue import Queue, QueueItem, Resolved, list_queue, resolve_flag
from datatool.analysis.qa.rules import Thresholds

__all__ = [
    "QAReport",
    "QARun",
    "Queue",
    "QueueItem",
    "ReasonCount",
    "Resolved",
    "Thresholds",
    "list_queue",
    "resolve_flag",
    "run_qa",
    "write_report",
]
