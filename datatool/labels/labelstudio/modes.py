"""How pushed images reach the Label Studio server: a light module (no SDK import), so the
command line can list the choices in ``--help`` without loading the Label Studio SDK."""

from __future__ import annotations

from enum import StrEnum


class ServeMode(StrEnum):
    """``local``: the PNGs are copied under the server's local-files document root (the
    server runs on this machine); ``upload``: they are uploaded through the API."""

    local = "local"
    upload = "upload"


class ReviewStoreAs(StrEnum):
    """Where a review project's corrected labels go (chosen when the project is made):
    ``rater``: the reviewed rater's next label version; ``reviewer``: the reviewer's own label
    (rater ``--reviewer``), beside the rater's."""

    rater = "rater"
    reviewer = "reviewer"
