"""``make mutate``: mutation testing of the modules that compute figures, with mutmut 3.

Each module is mutated in a sandbox of its own, ``build/mutate/NAME`` (a copy of the
package laid out as the wheel installs it, and of the tests), against the test modules that
cover it; the working tree is never touched. For each module it prints the mutants killed
out of those tried, the kill rate, and every survivor with its diff. A survivor that cannot
change any output (an equivalent mutant) is listed in ``EQUIVALENT`` below with why, and
in the README; any other survivor makes the exit status 1.

    python tests/mutate.py                 # every module below (long: see the README)
    python tests/mutate.py metrics shape   # some of them
    python tests/mutate.py --list          # the modules and their tests
    python tests/mutate.py --again rle     # the last pass's survivors (timeouts, no tests) only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SANDBOXES = ROOT / "build" / "mutate"


@dataclass(frozen=True)
class Module:
    source: str  # the file mutated, relative to the repository
    tests: tuple[str, ...]  # the test modules run against each mutant (and pytest options)
    functions: tuple[str, ...] = ()  # only these functions' mutants (default: all)

    @property
    def dotted(self) -> str:
        return self.source.removesuffix(".py").replace("/", ".")


# The modules that compute a figure, and the tests that check those figures.
MODULES: dict[str, Module] = {
    # its unit tests only: quick enough for CI (the agreement tests cover it again, slowly)
    "metrics": Module("datatool/analysis/metrics.py", ("tests/analysis/test_metrics.py",)),
    # what CI runs (make mutate-ci): metrics' overlap measures and descriptives, about a
    # minute; ICC and Shapiro-Wilk are "metrics-stats", and left to the full pass
    "metrics-core": Module(
        "datatool/analysis/metrics.py",
        ("tests/analysis/test_metrics.py",),
        ("overlap", "box_intersection", "dice_iou", "describe", "bland_altman"),
    ),
    # ICC(2,1) and Shapiro-Wilk, computed in numpy, against pingouin's and scipy's figures
    "metrics-stats": Module(
        "datatool/analysis/metrics.py",
        (
            "tests/analysis/test_metrics.py",
            "tests/analysis/test_stats_oracles.py",
            "-k",
            "not do_not_import",
        ),
        ("normality", "_poly", "shapiro_wilk", "icc21", "icc21_matrix"),
    ),
    # its measures (ratings, Dice/IoU, Bland-Altman, ICCs and their notes, overlaps and
    # surface distances, the measure chosen, the notes) against the numbers tests on a
    # sample built by hand; the two that go through a catalogue (10-20 s a mutant at a load
    # of 8, and run_agreement's and _load_sample's 435 mutants of plumbing: hours) and
    # test_agreement*.py are left to the suite
    "agreement": Module(
        "datatool/analysis/agreement.py",
        (
            "tests/analysis/test_agreement_numbers.py",
            "-k",
            "not numbers_in_mm2_then_px and not what_the_agreement_command_prints",
        ),
        (
            "_slug",
            "_prelabelled_notes",
            "_cine_notes",
            "_wanted_structures",
            "_choose_measure",
            "_ratings",
            "_matrix",
            "_structure_agreement",
            "_icc_or_note",
            "_overlap_one",
            "_overlaps",
        ),
    ),
    "consensus": Module(
        "datatool/analysis/consensus.py",
        (
            "tests/analysis/test_consensus_numbers.py",
            "tests/analysis/test_consensus_adjudication.py",
            "tests/analysis/test_consensus_quality.py",
        ),
    ),
    # its severities are checked by hand in test_shape.py too, so the QA tests (a workspace
    # and a trained run each) need not run against every mutant
    "shape": Module("datatool/analysis/shape.py", ("tests/analysis/test_shape.py",)),
    # the rules on hand-built inputs; test_qa.py builds a 12-image workspace per test (40 s
    # for its quick tests, which a survivor runs whole) and trains for the drafts' test: the
    # suite runs it
    "qa": Module("datatool/analysis/qa/rules.py", ("tests/analysis/test_qa_rules_numbers.py",)),
    "temporal": Module(
        "datatool/analysis/qa/temporal.py",
        ("tests/analysis/test_qa_temporal_numbers.py",),
        ("jumps",),
    ),
    "masks": Module("datatool/labels/masks.py", ("tests/labels/test_annotations.py",)),
    # the measures (per image, pooled, per structure, surfaces, the ANOVA, the ratio to the
    # raters) against the hand-counted tests; the two scored runs (a trained run, the level
    # reader on painted images), which also reach score_run's plumbing, build workspaces: a
    # minute or more a mutant, left to the suite
    "scoring": Module(
        "datatool/learning/scoring.py",
        (
            "tests/learning/test_scoring_numbers.py",
            "-k",
            "not scored_run_matches and not model_that_segments",
        ),
        (
            "per_image_metrics",
            "_anova",
            "_finite",
            "_metric_rows",
            "_metric_table",
            "_image_scores",
            "_mean_iou",
            "_ratio",
            "versus_raters",
            "_mean_iou_per_image",
            "_per_structure",
            "_surfaces",
        ),
    ),
    # the dealing, ratios, strata, folds, content hash, counts and leakage messages against
    # the tests on hand-built input; the tests that build workspaces (the demo with labels
    # and a consensus, ingests of handmade patients: seconds a test) reach the same
    # functions and create_split/show_split/check_split's queries, left to the suite
    "splits": Module(
        "datatool/learning/splits.py",
        (
            "tests/learning/test_splits.py",
            "-k",
            "by_hand or word_for_word or sha256 or close_to_the_ratios",
        ),
        (
            "parse_ratios",
            "deal",
            "content_hash",
            "_params",
            "_hashed",
            "_assign",
            "_inherit",
            "_counts",
            "_leakage",
            "_first_five",
            "_moved",
        ),
    ),
    # the ranking's choices on hand-built input (the cap, the list, its notes, the run):
    # the tests on ingested images rank them with a model (seconds a call, half a minute a
    # test), and next_images/_push need a trained run and a Label Studio server; the suite
    # runs all of them
    "selection": Module(
        "datatool/assist/selection.py",
        ("tests/assist/test_selection.py", "-k", "by_hand"),
        ("latest_done_run", "per_patient_cap", "choose", "shortfall"),
    ),
    # its unit tests (dates, ages, hashes and shares by hand); the ingest-bound tests (the
    # leak tests, the dates through a whole ingest) are left to the suite: minutes a mutant.
    # pseudonym_for, uid_for and date_shift_days are under lru_cache: mutmut leaves them be
    "deid": Module(
        "datatool/ingest/deid.py", ("tests/ingest/test_deid.py", "-k", "not no_identity_reaches")
    ),
    # not the ingest of every vendor file into two workspaces (the same images from disk
    # and from memory: 3 s a mutant), nor the peak memory of whole ingests (subprocesses,
    # which mutmut's per-test record cannot see); the files and refusals by hand cover it
    "decode": Module(
        "datatool/ingest/dicom.py",
        (
            "tests/ingest/test_decode_reference.py",
            "tests/ingest/test_dicom.py",
            "-k",
            "not large_files_decoded_from_disk and not peak_memory",
        ),
    ),
    # a plain NIfTI map decoded without ITK: the voxels and geometry ITK would give
    "nifti": Module(
        "datatool/labels/itksnap/nifti.py", ("tests/labels/itksnap/test_nifti_fast.py",)
    ),
    # the brush RLE both ways; the JSON export's checks (check_task, parse_export, ...)
    # compute no figure (tests/labels/labelstudio/test_sync.py reaches them)
    "rle": Module(
        "datatool/labels/labelstudio/formats.py",
        ("tests/labels/labelstudio/test_formats.py",),
        (
            "mask_to_results",
            "_region_name",
            "_brush_labels",
            "decode_region",
            "rle_values",
            "results_to_mask",
        ),
    ),
}

# Survivors that cannot change any output, by mutant name, with why (also in the README).
_M = "datatool.analysis.metrics."
_DTYPE = (
    "np.asarray(..., float) -> dtype None or left out: every caller passes Python or numpy "
    "numbers; numpy's own dtype (int or float) gives the same mean, SD, percentiles and "
    "differences once the results are cast with float()"
)
_T = "datatool.analysis.qa.temporal.x_jumps__mutmut_"
_T_DTYPE = (
    "np.asarray(..., float) -> dtype None or left out: the values are float centroids and "
    "radii, the frames ints whose differences are divided into floats"
)
_EMPTY_MAP = (
    "min/max with initial=None: differs only on a map of no pixels, which the size check "
    "has refused unless the image has none"
)
_F = "datatool.labels.labelstudio.formats."
_UNREACHED = (
    "the message of a decoded RLE of the wrong length, which label_studio_sdk's decode_rle "
    "cannot return: it fills np.zeros(the header's count), and the header was checked first"
)
_D = "datatool.ingest.deid."
_OUTSIDE = (
    "a box wholly outside the image kept instead of dropped: its area and its overlap with "
    "any other box are 0 either way (_box_area takes max(0, extent))"
)
_BLANK = "'XXXX' in place of '' for a missing value: it matches no pattern or code either"
_SC = "datatool.learning.scoring."
_S = "datatool.analysis.shape."
_SHORTCUT = (
    "the shortcut (a hole needs a row that enters the structure twice) taken less often: the "
    "exact count that follows gives the same answer"
)
_SUM = (
    "sum(dtype=None) of uint8 pixels: numpy's uint64 sums, the same counts (the int64 is "
    "there for speed: uint64 @ int64 goes through float64, exact for these sizes, slower)"
)
_SPL = "datatool.learning.splits."
_STRATUM = (
    "a stratum's key spelt otherwise: keys only group the patients, and each stratum is "
    "dealt on its own whatever order the keys sort in"
)
_FOLDS_EQUAL = (
    "the folds' equal weights changed alike: with equal targets, deal() gives each patient "
    "to the least filled fold (ties to the lower) whatever the common weight or offset"
)
_SEL = "datatool.assist.selection."
_Q = "datatool.analysis.qa.rules."
_PAIRED = (
    "a rater the pair check reaches has the structure and overlaps the label: a rater "
    "without it (no measure, no overlap) gives Dice 0, a rater disagreement or a swap, and "
    "the structure then gets no pair check at all"
)
_C = "datatool.analysis.consensus."
_MARGIN = (
    "the box round the labels one row or column more or less past their last (every labelled "
    "pixel still inside): only agreed background moves between the box and the pixels "
    "outside it, which the specificity adds back; STAPLE's figures move within its "
    "convergence tolerance (margins 7, 8, 9 and 30 give the whole image's figures to 1e-8)"
)
_ONE_MAP = (
    "the method fuse is given for rater:NAME: fuse copies a single map before it reads the method"
)
_SHORTCUT_C = (
    "shape.cross_counts' shortcut (only the structure's own count, when it alone rules out "
    "a swap) skipped, or its area counted again: the full counts give shape.swap the same "
    "answer"
)
_FIRST_ROW = (
    "limit(None) or limit(2) for limit(1): Session.scalar reads the first row either way, "
    "and only whether there is one counts"
)
_NO_BACKGROUND = (
    "the guard of a box with no estimated background and nothing outside it: that is every "
    "rater labelling the whole image, where STAPLE's figures are all NaN (checked), and NaN "
    "passes through either branch"
)
# decode
_DC = "datatool.ingest.dicom.x_"
_FORCE = (
    "read_preamble's force (None or True for False): the file was found deflated by "
    "_is_deflated, which reads the preamble without force, so it has one"
)
_VR_GUESS = (
    "the dataset read as Implicit VR (or None for False): pydicom's read_dataset looks at "
    "the first element and reads Explicit VR all the same"
)
_ONE_MORE_ROUND = (
    "the pixel tag's 4 bytes asked for with one byte more: a body that ends right after "
    "them is inflated one round further and the same header found"
)
_HEAD_8K = (
    "the first 8193 bytes (or the whole file) searched for the deflated syntax: the file "
    "meta that names it lies in the first few hundred"
)
_NO_SYNTAX = (
    "'XXXX' or None for '' when the file meta has no transfer syntax: not the deflated "
    "UID either way"
)
_U8_CAST = (
    "the cast of 8-bit colour values to uint8 left out: the luma that follows casts every "
    "channel to uint16 anyway, the same values"
)
_ZEROS = (
    "np.zeros without uint8 (float64 zeros) where the range is empty: reached from colour "
    "(the luma casts to uint16) or from a VOI LUT of 0 bits, which no image has"
)
# agreement
_AG = "datatool.analysis.agreement.x_"
_POOL = (
    "how the overlaps are shared among worker processes (the pool's size or chunks, from "
    "how many items, or a pool of one): every item is counted by _overlap_one all the same, "
    "in order"
)
_CROP_MARGIN = (
    "the crop one row or column past the union of both boxes: it holds none of the "
    "structure's pixels, and metrics.surface takes the crop's edge as outside anyway"
)
_NI = "datatool.labels.itksnap.nifti.x_"
_NI_349 = (
    "349 for 348: the header is cut to (or inflated to) 349 bytes, but only its first 348 "
    "are read, and what follows is taken up to the voxel offset (at least 352) all the same"
)
EQUIVALENT: dict[str, str] = {
    # agreement
    _AG + "_overlap_one__mutmut_59": _CROP_MARGIN,
    _AG + "_overlap_one__mutmut_61": _CROP_MARGIN,
    _AG + "_overlaps__mutmut_58": _POOL + " (cap=None: one per core)",
    _AG + "_overlaps__mutmut_59": _POOL + " (cap=9)",
    _AG + "_overlaps__mutmut_60": _POOL + " (a pool for small samples too)",
    _AG + "_overlaps__mutmut_61": _POOL + " (exactly POOL_FROM items counted in-process)",
    _AG + "_overlaps__mutmut_62": _POOL + " (a pool of one worker)",
    _AG + "_overlaps__mutmut_63": _POOL + " (no pool below 3 workers)",
    _AG + "_overlaps__mutmut_64": _POOL + " (Pool(None): one per core)",
    _AG + "_overlaps__mutmut_68": _POOL + " (chunksize=None: the pool's own)",
    _AG + "_overlaps__mutmut_71": _POOL + " (chunksize left out: the pool's own)",
    _AG + "_overlaps__mutmut_72": _POOL + " (chunksize=65)",
    _AG + "_slug__mutmut_12": (
        ".strip('XX_XX'): strips X as well as _, and the name was lower-cased: no X left"
    ),
    # decode
    _DC + "_check_geometry__mutmut_28": (
        "frames < 0 for <= 0: n_frames never gives 0 (a NumberOfFrames of 0 is one frame)"
    ),
    _DC + "_check_geometry__mutmut_74": (
        "undefined-length pixel data taken to end 1 byte (not 0) past its start: a file "
        "pydicom reads holds at least its first item's tag there"
    ),
    _DC + "_header_before_pixels__mutmut_8": _VR_GUESS,
    _DC + "_header_before_pixels__mutmut_15": _VR_GUESS,
    _DC + "_header_before_pixels__mutmut_21": _ONE_MORE_ROUND,
    _DC + "_header_before_pixels__mutmut_23": _ONE_MORE_ROUND,
    _DC + "_header_before_pixels__mutmut_29": (
        "the pixel tag unpacked as signed shorts: 0x7FE0 and 0x0010 are below 0x8000, the "
        "same numbers"
    ),
    _DC + "_inflate_bounded__mutmut_7": _FORCE,
    _DC + "_inflate_bounded__mutmut_10": _FORCE,
    _DC + "_inflate_bounded__mutmut_73": (
        "the last round inflates up to bound + 1 + len(body) rather than bound + 1 - "
        "len(body): a stream beyond the bound is refused all the same (at most the header's "
        "size more memory, 16 MiB)"
    ),
    _DC + "_inflate_bounded__mutmut_75": (
        "the last round inflates 2 bytes past the bound rather than 1: one is enough to "
        "refuse, and the refusal is the same"
    ),
    _DC + "_inflate_bounded__mutmut_94": (
        "write_file_meta_info(enforce_standard=None): None is False to it"
    ),
    _DC + "_is_deflated__mutmut_2": _HEAD_8K,
    _DC + "_is_deflated__mutmut_10": (
        "read_preamble(force=None or True): a file without preamble is then read from its "
        "first byte, where no file meta names the deflated syntax (a file meta follows a "
        "preamble), so it is not deflated either way"
    ),
    _DC + "_is_deflated__mutmut_13": (
        "read_preamble(force=True): as force=None, a file without preamble has no file "
        "meta naming the deflated syntax"
    ),
    _DC + "_is_deflated__mutmut_19": _NO_SYNTAX,
    _DC + "_is_deflated__mutmut_21": _NO_SYNTAX,
    _DC + "_is_deflated__mutmut_25": _NO_SYNTAX,
    _DC + "_rescale__mutmut_9": _ZEROS,
    _DC + "_rescale__mutmut_11": _ZEROS,
    _DC + "_rescale__mutmut_15": (
        "the stretch in float64 rather than float32: for whole pixel values over a bit "
        "range no float32 product falls within its rounding error (2e-5) of a half (x * 255 "
        "/ (2^b - 1) is k/255 or k*17/273 apart from one); only the windowed values of a "
        "VOI could differ, by one gray level, the float64 one being the exact one"
    ),
    _DC + "declared_pixel_bytes__mutmut_23": (
        "min() without SamplesPerPixel: it is 1 or more (US is unsigned, 0 and empty read as 1)"
    ),
    _DC + "read_dataset_from__mutmut_9": _HEAD_8K,
    _DC + "read_dataset_from__mutmut_29": (
        "defer_size=0 (1 >> 16) for a file without preamble: pydicom then leaves every value "
        "on disk and reads each when it is used, the same values"
    ),
    _DC + "read_header__mutmut_9": _HEAD_8K,
    _DC + "read_header__mutmut_32": _FORCE,
    _DC + "read_header__mutmut_35": _FORCE,
    _DC + "read_header__mutmut_45": _VR_GUESS,
    _DC + "read_header__mutmut_55": _VR_GUESS,
    _DC + "to_gray8__mutmut_16": _U8_CAST,
    _DC + "to_gray8__mutmut_19": _U8_CAST,
    # scoring
    _SC + "x_per_image_metrics__mutmut_46": (
        "F1 when precision or recall is nonzero, not both: they differ only when one is 0 and "
        "the other not, and both are 0 (or None) exactly when tp is 0"
    ),
    _SC + "x__anova__mutmut_18": "pingouin.anova(detailed=None): read as False, its default",
    _SC + "x__anova__mutmut_22": "pingouin.anova's detailed left out: False is its default",
    _SC + "x__metric_rows__mutmut_14": (
        "per_image_metrics over one class more than there are names: zip with the names "
        "drops its result"
    ),
    _SC + "x__image_scores__mutmut_16": (
        "to_dict('RECORDS'): pandas lower-cases the orient ('records')"
    ),
    _SC + "x__surfaces__mutmut_2": (
        "the surface distances described over every row, one-empty rows too: theirs are "
        "NaN, which metrics.describe leaves out"
    ),
    # shape
    _S + "x_extra_component_px__mutmut_6": (
        "n < allowed as n <= allowed: at n == allowed the pixels beyond the allowed largest "
        "components are an empty slice, 0 either way"
    ),
    _S + "x_centroid__mutmut_7": _SUM,
    _S + "x_centroid__mutmut_9": _SUM,
    _S + "x_centroid__mutmut_13": _SUM,
    _S + "x_centroid__mutmut_15": _SUM,
    _S + "x_holes__mutmut_8": _SHORTCUT + " (a | in place of the & of a run's start)",
    _S + "x_holes__mutmut_15": _SHORTCUT + " (the starts of every row summed, not each row's)",
    "datatool.labels.masks.x__unknown_error__mutmut_12": (
        "the fallback for a map with no unknown value, never reached: a map is refused for "
        "its values only when one lies outside the protocol (a run of unknown values, below "
        "0 or above 255), and that value is then listed"
    ),
    "datatool.labels.masks.x__unknown_runs__mutmut_8": (
        "range(1, 258): 256 closes the last run of unknown values as the loop's end did; 257 "
        "finds no run open"
    ),
    "datatool.labels.masks.x_validate_mask__mutmut_44": _EMPTY_MAP,
    "datatool.labels.masks.x_validate_mask__mutmut_45": (
        "min(initial=1) < 0 as min(initial=0) < 0: true exactly when a value is negative"
    ),
    "datatool.labels.masks.x_validate_mask__mutmut_48": _EMPTY_MAP,
    "datatool.labels.masks.x_validate_mask__mutmut_49": (
        "max(initial=1) > 255 as max(initial=0) > 255: true exactly when a value is above 255"
    ),
    "datatool.labels.masks.x_validate_mask__mutmut_59": (
        "a single unknown value compared as the range lo..lo: the same pixels (== is a shortcut)"
    ),
    "datatool.labels.masks.x_structure_stats__mutmut_46": (
        "the band cut one row past the structure's last row: that row holds none of its "
        "pixels, so the columns, area and components are the same"
    ),
    "datatool.labels.masks.x_structure_stats__mutmut_59": (
        "the box cut one column past the structure's last column: that column holds none of "
        "its pixels, so the area and components are the same"
    ),
    _D + "x_quarantine_kind__mutmut_3": _BLANK + " ('other')",
    _D + "x_age_at_exam__mutmut_5": _BLANK + " (the dates decide)",
    _D + "x_normalise_sex__mutmut_5": _BLANK + " (None)",
    _D + "x_parse_da__mutmut_4": _BLANK + " (None)",
    _D + "x__clipped__mutmut_38": _OUTSIDE,
    _D + "x__clipped__mutmut_39": _OUTSIDE,
    _D + "x__keep_mask__mutmut_6": (
        "np.zeros(shape[:3]): on a colour image the mask gets the channel axis, every "
        "channel set alike, so the same pixels are blanked (2-D callers: the same shape)"
    ),
    _D + "x_room_for_banner__mutmut_9": (
        ">= 0.05 as > 0.05: no image of whole pixels leaves exactly 0.05 outside in floating "
        "point (1 - 0.95 is 0.05000000000000004), so the two never differ"
    ),
    _D + "x_parse_da__mutmut_24": "text[6:9] of a text that matched \\d{8}: the same two digits",
    _D + "x_covered_share__mutmut_17": (
        "two boxes measured with the mask rather than by inclusion-exclusion: the same share "
        "(the arithmetic is a shortcut; the mask's mean of whole counts is exact)"
    ),
    _F + "x_decode_region__mutmut_96": _UNREACHED,
    _F + "x_decode_region__mutmut_97": _UNREACHED,
    _F + "x_decode_region__mutmut_98": _UNREACHED,
    _F + "x_decode_region__mutmut_99": _UNREACHED,
    _F + "x_results_to_mask__mutmut_29": (
        "_region_name(None) for the entry's: _brush_labels refuses only brushlabels that are "
        "not a list of names, and then _region_name shows no labels either way"
    ),
    _T + "8": _T_DTYPE,
    _T + "10": _T_DTYPE,
    _T + "15": _T_DTYPE,
    _T + "17": _T_DTYPE,
    _T + "12": "reshape(n, -2): numpy reads any negative size as the one unknown, like -1",
    _M + "x_describe__mutmut_3": _DTYPE,
    _M + "x_describe__mutmut_5": _DTYPE,
    _M + "x_normality__mutmut_3": _DTYPE + " (shapiro_wilk casts to float itself)",
    _M + "x_normality__mutmut_5": _DTYPE + " (shapiro_wilk casts to float itself)",
    _M + "x_shapiro_wilk__mutmut_4": _DTYPE + " (W's sums are taken with float coefficients)",
    _M + "x_shapiro_wilk__mutmut_6": _DTYPE + " (W's sums are taken with float coefficients)",
    _M + "x_bland_altman__mutmut_3": _DTYPE + " (one side float is enough: a - b is float)",
    _M + "x_bland_altman__mutmut_5": _DTYPE + " (one side float is enough: a - b is float)",
    _M + "x_bland_altman__mutmut_7": _DTYPE + " (one side float is enough: a - b is float)",
    _M + "x_bland_altman__mutmut_9": _DTYPE + " (one side float is enough: a - b is float)",
    # splits
    _SPL + "x__assign__mutmut_14": _STRATUM + " ('XX?XX' for a patient of no sex)",
    _SPL + "x__assign__mutmut_29": _STRATUM + " ('XX?XX' for an image of no side)",
    _SPL + "x__assign__mutmut_48": _STRATUM + " (sides joined by 'XXXX': 'LXXXXR' for 'LR')",
    _SPL + "x__assign__mutmut_52": _STRATUM + " ('XXXX' for the one stratum of no strata)",
    _SPL + "x__assign__mutmut_24": (
        "each patient's images counted twice: every count and every kept patient's filling "
        "doubles with them, and deal()'s choice (target - filled) / target is the same at "
        "any scale (doubling is exact in floating point)"
    ),
    _SPL + "x__assign__mutmut_41": _FOLDS_EQUAL + " (every fold starting one image fuller)",
    _SPL + "x__assign__mutmut_108": _FOLDS_EQUAL + " (a weight of folds, not 1 / folds)",
    _SPL + "x__assign__mutmut_109": _FOLDS_EQUAL + " (a weight of 2 / folds, not 1 / folds)",
    _SPL + "x_deal__mutmut_40": "float('-INF'): Python reads it case-insensitively, -inf",
    # selection
    _SEL + "x_latest_done_run__mutmut_3": _FIRST_ROW,
    _SEL + "x_latest_done_run__mutmut_11": _FIRST_ROW,
    # qa
    _Q + "x__pair_outlier__mutmut_14": _PAIRED + " (continue as break)",
    _Q + "x__pair_outlier__mutmut_98": _PAIRED + " (overlap's default None)",
    _Q + "x__pair_outlier__mutmut_100": _PAIRED + " (overlap's default None)",
    _Q + "x__pair_outlier__mutmut_103": _PAIRED + " (overlap's default 1)",
    _Q + "x__evaluate__mutmut_166": "holes' default (0, 1): no hole counted, no flag",
    _Q + "x__evaluate__mutmut_193": "edge's default (0, 1): no pixel touching, no flag",
    _Q + "x__beyond_pairs__mutmut_11": (
        "z >= 0 for z > 0: at z = 0 size_severity finds nothing beyond a threshold above 0 "
        "(Thresholds.check refuses any other)"
    ),
    # consensus
    _C + "x_fused_annotation_ids__mutmut_4": (
        "'XXXX' for the '' of a label without source_ref: it names no annotation either"
    ),
    _C + "x_staple_performance__mutmut_25": _MARGIN,
    _C + "x_staple_performance__mutmut_28": _MARGIN,
    _C + "x_staple_performance__mutmut_29": _MARGIN,
    _C + "x_staple_performance__mutmut_32": _MARGIN,
    _C + "x_structure_conflicts__mutmut_32": _SHORTCUT_C + " (value None: no shortcut)",
    _C + "x_structure_conflicts__mutmut_63": _SHORTCUT_C + " (value None: no shortcut)",
    _C + "x_structure_conflicts__mutmut_34": _SHORTCUT_C + " (area None: counted again)",
    _C + "x_structure_conflicts__mutmut_39": _SHORTCUT_C + " (area left out: counted again)",
    _C + "x_structure_conflicts__mutmut_65": _SHORTCUT_C + " (area None: counted again)",
    _C + "x_structure_conflicts__mutmut_70": _SHORTCUT_C + " (area left out: counted again)",
    _C + "x_make_consensus__mutmut_130": _FIRST_ROW,
    _C + "x_make_consensus__mutmut_138": _FIRST_ROW,
    _C + "x_make_consensus__mutmut_157": _ONE_MAP,
    _C + "x_make_consensus__mutmut_159": _ONE_MAP,
    _C + "x_make_consensus__mutmut_160": _ONE_MAP,
    _C + "x_make_consensus__mutmut_103": (
        "structure_conflicts for rater:NAME too: its one map has no pair to conflict"
    ),
    _C + "x_staple_performance__mutmut_50": "crops[1].size: every rater's crop is the same box",
    _C + "x_staple_performance__mutmut_53": _NO_BACKGROUND,
    _C + "x_staple_performance__mutmut_58": (
        "background - outside as the guard: it differs from background + outside only where "
        "STAPLE's estimated background (a sum of 1 - probabilities, never all exactly 0 or 1 "
        "where raters differ) equals the whole count of pixels outside the box exactly"
    ),
    # nifti: the header is always looked at as exactly its 348 bytes
    _NI + "_header_of__mutmut_6": _NI_349,
    _NI + "_header_of__mutmut_16": _NI_349,
    _NI + "_layout__mutmut_17": _NI_349,
    _NI + "_layout__mutmut_11": "'I' for sizeof_hdr: 348 either way, any other size refused",
    _NI + "_layout__mutmut_29": (
        "'8H' for dim[]: a negative dimension read as a large one gives a header ITK never "
        "read (it refuses it), so it is never remembered and never decoded here"
    ),
    _NI + "_layout__mutmut_39": "'H' for the datatype: every NIfTI datatype code is < 32768",
    _NI + "remember__mutmut_9": "popitem(last=None): None is false, as False",
}

KILLED = {1, 3}  # pytest's exit status: tests failed / internal error (a crash is a kill)
TIMEOUTS = {24, -24, 36, 152, 255}  # mutmut's codes of a mutant stopped for its time
NO_TESTS = {5, 33}  # no test reached the mutant (a test written since may)
# mutmut stops a mutant after (its tests' time + 1 s) x this multiplier of wall-clock time
# (mutmut's default 15). On a shared machine a mutant's tests at nice 19 get a sliver of a
# core, and mutants whose tests take under a second timed out (and counted as killed):
# 60 leaves room for that and still stops a mutant that loops within a few minutes.
TIMEOUT_MULTIPLIER = 60.0
STATUS = {
    0: "survived",
    1: "killed",
    3: "killed",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -9: "killed by a signal",
    -11: "segfault",
    None: "not checked",
}


def _sandbox(name: str, module: Module) -> Path:
    """A fresh copy: the package as the wheel lays it out (model/, migrations/ and schemas/
    inside datatool/), the tests, and pyproject.toml with this module's mutmut settings."""
    box = SANDBOXES / name
    shutil.rmtree(box, ignore_errors=True)
    box.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "datatool", box / "datatool", ignore=ignore)
    for folder in ("model", "migrations", "schemas"):
        shutil.copytree(ROOT / folder, box / "datatool" / folder, ignore=ignore)
    shutil.copytree(ROOT / "tests", box / "tests", ignore=ignore)
    _settings(box, module)
    return box


def _settings(box: Path, module: Module) -> None:
    """The sandbox's pyproject.toml: the repository's, with this module's mutmut settings
    (written again by ``--again``, so a pass picks up a changed timeout)."""
    settings = {
        "source_paths": ["datatool"],
        "only_mutate": [module.source],
        "pytest_add_cli_args_test_selection": list(module.tests),
        "pytest_add_cli_args": ["-p", "no:randomly", "-p", "no:cacheprovider", "-n", "0", "-q"],
        # torch and SimpleITK are not safe to fork after use: each worker forks from a
        # server that has only imported the tests
        "process_isolation": "forkserver",
        "use_git_change_detection": False,
        "timeout_multiplier": TIMEOUT_MULTIPLIER,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    text = (ROOT / "pyproject.toml").read_text().replace("[tool.mutmut]", "[tool.mutmut-repo]")
    (box / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")


def _results(box: Path, module: Module) -> dict[str, int | None]:
    """Mutant name -> pytest's exit status, from mutmut's record beside the mutated file."""
    meta = box / "mutants" / f"{module.source}.meta"
    if not meta.is_file():
        return {}
    return dict(json.loads(meta.read_text()).get("exit_code_by_key", {}))


def _diff(box: Path, mutant: str) -> str:
    done = subprocess.run(
        [str(BIN / "mutmut"), "show", mutant], cwd=box, capture_output=True, text=True
    )
    return done.stdout.strip()


@dataclass
class Outcome:
    name: str
    tried: int
    killed: int
    survivors: list[str]
    unexplained: list[str]
    other: dict[str, int]  # status -> count (timeouts, no tests, ...)
    seconds: float

    @property
    def rate(self) -> float:
        return self.killed / self.tried if self.tried else 0.0


def _again(name: str, module: Module) -> tuple[Path, list[str]]:
    """The sandbox of an earlier pass with today's tests copied in, and the mutants that
    survived it, timed out (on a busy machine, no verdict), had no test or were not checked:
    the only ones run again."""
    box = SANDBOXES / name
    before = _results(box, module)
    if not before:
        raise SystemExit(f"{name}: no earlier pass in {box} to run again (run it whole first)")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tests in (box / "tests", box / "mutants" / "tests"):
        shutil.rmtree(tests, ignore_errors=True)
        shutil.copytree(ROOT / "tests", tests, ignore=ignore)
    _settings(box, module)
    wanted = tuple(f"{module.dotted}.x_{f}__mutmut_" for f in module.functions) or ("",)
    return box, sorted(
        k
        for k, code in before.items()
        if (code in (0, None, *NO_TESTS) or code in TIMEOUTS) and k.startswith(wanted)
    )


def mutate(name: str, children: int, again: bool = False) -> Outcome:
    module = MODULES[name]
    if again:
        box, names = _again(name, module)
    else:
        box = _sandbox(name, module)
        names = [f"{module.dotted}.x_{f}__mutmut_*" for f in module.functions]
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(box)}
    done = subprocess.run(
        [str(BIN / "mutmut"), "run", "--max-children", str(children), *names],
        cwd=box,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    results = _results(box, module)
    if module.functions:
        wanted = tuple(f"{module.dotted}.x_{f}__mutmut_" for f in module.functions)
        results = {k: v for k, v in results.items() if k.startswith(wanted)}
    if not results:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{name}: mutmut ran no mutant (exit status {done.returncode})")
    killed = sum(1 for code in results.values() if code in KILLED)
    survivors = sorted(k for k, code in results.items() if code == 0)
    other: dict[str, int] = {}
    for code in results.values():
        if code not in KILLED and code != 0:
            status = STATUS.get(code, f"exit status {code}")
            other[status] = other.get(status, 0) + 1
    # a timeout is a kill (the mutant made the tests hang); "no tests" and the rest are not
    timeouts = other.pop("timeout", 0)
    killed += timeouts
    unexplained = [s for s in survivors if s not in EQUIVALENT]
    print(f"\n== {name}: {module.source} against {', '.join(module.tests)}")
    for survivor in survivors:
        why = EQUIVALENT.get(survivor)
        print(f"-- survived: {survivor}" + (f" (equivalent: {why})" if why else ""))
        if not why:
            print(_diff(box, survivor))
    outcome = Outcome(name, len(results), killed, survivors, unexplained, other, seconds)
    extra = f" ({timeouts} by timeout)" if timeouts else ""
    extra += "".join(f", {n} {status}" for status, n in sorted(other.items()))
    print(
        f"{name}: {outcome.killed}/{outcome.tried} killed ({100 * outcome.rate:.1f} %){extra}, "
        f"{len(survivors)} survived ({len(unexplained)} not known equivalent); "
        f"{seconds:.0f} s, load {os.getloadavg()[0]:.1f}"
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)}")
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--again",
        action="store_true",
        help="run only the survivors of the last pass again, against today's tests",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, module in MODULES.items():
            print(f"{name}: {module.source} <- {' '.join(module.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    names = args.modules or list(MODULES)
    outcomes = [mutate(name, args.children, args.again) for name in names]
    print("\nmodule       killed/tried  rate     survivors (not known equivalent)  time")
    for o in outcomes:
        print(
            f"{o.name:<12} {o.killed:>5}/{o.tried:<6} {100 * o.rate:5.1f} %  "
            f"{len(o.survivors):>4} ({len(o.unexplained)})"
            f"{'':>27}{o.seconds:5.0f} s"
        )
    return 1 if any(o.unexplained for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
