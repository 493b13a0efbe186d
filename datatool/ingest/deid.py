"""De-identification: keyed pseudonyms, UID replacement, date shifts, pixel blanking.

The catalogue keeps an allow-list of attributes (PS3.15 Annex E Basic Profile in spirit:
identifying attributes are removed, UIDs replaced consistently, dates shifted, private tags
never read). Everything identifying goes through a keyed HMAC-SHA256 with the workspace key,
so the same patient gets the same pseudonym in every run and process with the same key, and
nobody without the key can recompute one from a patient ID.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re
from functools import lru_cache

import numpy as np

MAX_AGE = 90  # ages above are reported as 90 (HIPAA Safe Harbor groups 90+)
DATE_SHIFT_MAX_DAYS = 365
#: Blanking outside the ultrasound regions removes a banner only where the regions leave room
#: for one: when less than this share of the image lies outside them, blanking would remove
#: (nearly) nothing and burned-in text inside the regions would stay.
BANNER_MIN_SHARE = 0.05

QUARANTINE_NO_REGION = (
    "pixels may hold burned-in identity and there is no ultrasound region to keep: "
    "quarantined (check the image, then re-run with --allow-burned-in)"
)
_NO_ROOM = "leaving no room for a banner to blank"


def quarantine_no_room(covered_share: float) -> str:
    """The quarantine reason of an image whose regions cover (nearly) all of it."""
    return (
        f"pixels may hold burned-in identity and the ultrasound regions cover "
        f"{100 * covered_share:.1f} % of the image, {_NO_ROOM}: quarantined (check the image, "
        "then re-run with --allow-burned-in)"
    )


def quarantine_kind(reason: str | None) -> str:
    """What a quarantine reason is about, in a few words (for counts)."""
    text = reason or ""
    if _NO_ROOM in text:
        return "regions cover the image"
    if "no ultrasound region" in text:
        return "no ultrasound region"
    return "other"


def keyed_digest(key: bytes, purpose: str, value: str) -> bytes:
    return hmac.new(key, f"{purpose}\x1f{value}".encode(), hashlib.sha256).digest()


@lru_cache(maxsize=4096)
def pseudonym_for(key: bytes, patient_id: str) -> str:
    """A stable pseudonym such as ``P-7KQ2M4XD9A`` for an original patient ID."""
    digest = keyed_digest(key, "patient", patient_id.strip())
    return "P-" + base64.b32encode(digest).decode("ascii")[:10]


@lru_cache(maxsize=4096)
def uid_for(key: bytes, original_uid: str) -> str:
    """A replacement UID, the same for the same original UID and key (PS3.15 action U)."""
    from pydicom.uid import PYDICOM_ROOT_UID, generate_uid  # pydicom loads when first used

    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[key.hex(), str(original_uid)])


def path_key(key: bytes, path: str) -> str:
    """A keyed hash of a file's path: finds the same file again without storing its name.
    Hashed as the path's bytes on disk: a name that is not valid UTF-8 (Python holds its
    bytes as surrogate escapes) hashes too, and a valid one as it always did."""
    return hmac.new(key, b"path\x1f" + os.fsencode(path), hashlib.sha256).hexdigest()


@lru_cache(maxsize=4096)
def date_shift_days(key: bytes, patient_id: str) -> int:
    """Days to move this patient's dates back by: 1..365, the same for all their studies."""
    digest = keyed_digest(key, "date-shift", patient_id.strip())
    return 1 + int.from_bytes(digest[:4], "big") % DATE_SHIFT_MAX_DAYS


def parse_da(value: object) -> dt.date | None:
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def shifted_date(value: object, shift_days: int) -> dt.date | None:
    date = parse_da(value)
    return None if date is None else date - dt.timedelta(days=shift_days)


def age_at_exam(patient_age: object, birth_date: object, study_date: object) -> int | None:
    """Age in whole years from PatientAge (``047Y``) or else from the two dates; capped at 90."""
    text = str(patient_age or "").strip().upper()
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text)
    age: int | None = None
    if match:
        n, unit = int(match.group(1)), match.group(2)
        age = n if unit == "Y" else n // {"M": 12, "W": 52, "D": 365}[unit]
    else:
        born, seen = parse_da(birth_date), parse_da(study_date)
        if born and seen and seen >= born:
            age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return None if age is None else min(age, MAX_AGE)


def normalise_sex(value: object) -> str | None:
    text = str(value or "").strip().upper()
    return {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}.get(text)


def covered_share(regions: list[dict], rows: int, cols: int) -> float:
    """The share of a rows x cols image inside the union of the (clipped, inclusive) region
    boxes: 0 without regions, 1 when they cover it all."""
    if not regions or rows <= 0 or cols <= 0:
        return 0.0
    boxes = [b for b in (_clipped(r, rows, cols) for r in regions) if b is not None]
    if len(boxes) <= 2:  # the usual case, without a mask: inclusion-exclusion
        area = sum(_box_area(b) for b in boxes)
        if len(boxes) == 2:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            area -= _box_area((max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)))
        return area / (rows * cols)
    return float(_keep_mask((rows, cols), regions).mean())


def _clipped(r: dict, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    x0, y0 = max(0, int(r["x0"])), max(0, int(r["y0"]))
    x1, y1 = min(cols - 1, int(r["x1"])), min(rows - 1, int(r["y1"]))
    return (x0, y0, x1, y1) if x1 >= x0 and y1 >= y0 else None


def _box_area(box: tuple[int, int, int, int]) -> int:
    x0, y0, x1, y1 = box
    return max(0, x1 - x0 + 1) * max(0, y1 - y0 + 1)


def room_for_banner(regions: list[dict], rows: int, cols: int) -> bool:
    """Whether blanking outside the regions can remove a banner: enough of the image lies
    outside them (see BANNER_MIN_SHARE)."""
    return 1.0 - covered_share(regions, rows, cols) >= BANNER_MIN_SHARE


def _keep_mask(shape: tuple[int, ...], regions: list[dict]) -> np.ndarray:
    keep = np.zeros(shape[:2], dtype=bool)
    for r in regions:
        keep[r["y0"] : r["y1"] + 1, r["x0"] : r["x1"] + 1] = True
    return keep


def blank_outside_regions(pixels: np.ndarray, regions: list[dict]) -> np.ndarray:
    """Zero every pixel outside the union of the (clipped, inclusive) region boxes."""
    keep = _keep_mask(pixels.shape, regions)
    out = pixels.copy()
    out[~keep] = 0
    return out
