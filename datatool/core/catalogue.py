"""The catalogue: SQLAlchemy 2 models and the engine/session helpers.

The schema is created and upgraded only by the Alembic migrations under ``migrations/``.
Nothing here depends on SQLite: the same models run on PostgreSQL (``DATATOOL_DB_URL``).
No column holds a patient name, ID, birth date, accession number, institution, original UID
or original file path: patients are pseudonyms, UIDs are keyed replacements, paths are keyed
hashes.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

# the QA flags' reasons and statuses live in a light module (the CLI lists them in --help)
from datatool.core.flags import FlagReason as FlagReason
from datatool.core.flags import FlagStatus as FlagStatus


class FileStatus(StrEnum):
    """What ingest made of a source file (rejected files leave no row)."""

    ingested = "ingested"
    quarantined = "quarantined"  # pixels may hold burned-in identity
    conflict = "conflict"  # same SOP Instance UID, other bytes: kept aside


class RaterKind(StrEnum):
    human = "human"
    consensus = "consensus"  # named consensus:METHOD
    model = "model"  # named model:RUN


class RunStatus(StrEnum):
    running = "running"
    done = "done"
    failed = "failed"
    interrupted = "interrupted"  # stopped (Ctrl-C, kill): 'datatool train --resume RUN'


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    sex: Mapped[str | None] = mapped_column(String(1))
    age_years: Mapped[int | None] = mapped_column(Integer)  # at the first exam, capped at 90
    bmi: Mapped[float | None] = mapped_column(Float)
    asa_class: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), nullable=False, index=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)  # pseudonymous
    study_date: Mapped[dt.date | None] = mapped_column(Date)  # shifted per patient
    age_at_exam: Mapped[int | None] = mapped_column(Integer)
    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), nullable=False, index=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)  # pseudonymous
    modality: Mapped[str | None] = mapped_column(String(16))
    side: Mapped[str | None] = mapped_column(String(1))  # L, R or None
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))
    study: Mapped[Study] = relationship(back_populates="series")
    images: Mapped[list[Image]] = relationship(back_populates="series")


class SourceFile(Base):
    """One DICOM file seen by ingest. ``status`` is ``ingested``, ``quarantined`` or
    ``conflict``; rejected (unreadable) files leave no row, only a line in the report."""

    __tablename__ = "source_files"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    path_key: Mapped[str] = mapped_column(String(64), nullable=False, index=True)  # keyed hash
    sop_uid: Mapped[str] = mapped_column(String(64), nullable=False, index=True)  # pseudonymous
    sop_class_uid: Mapped[str] = mapped_column(String(64), nullable=False)
    transfer_syntax: Mapped[str] = mapped_column(String(64), nullable=False)
    photometric: Mapped[str | None] = mapped_column(String(32))
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    aside: Mapped[Any] = mapped_column(
        JSON, nullable=True
    )  # store hashes of a conflicting version's frames
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    images: Mapped[list[Image]] = relationship(back_populates="source_file")


class Image(Base):
    """One frame used as a dataset image: de-identified 8-bit grayscale in the store."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("source_file_id", "frame_index"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), nullable=False, index=True)
    source_file_id: Mapped[int] = mapped_column(ForeignKey("source_files.id"), nullable=False)
    frame_index: Mapped[int] = mapped_column(Integer, nullable=False)
    store_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    rows: Mapped[int] = mapped_column(Integer, nullable=False)
    cols: Mapped[int] = mapped_column(Integer, nullable=False)
    mm_per_px_x: Mapped[float | None] = mapped_column(Float)
    mm_per_px_y: Mapped[float | None] = mapped_column(Float)
    regions: Mapped[Any] = mapped_column(JSON, nullable=True)  # clipped ultrasound regions
    pixel_handling: Mapped[str] = mapped_column(String(24), nullable=False)
    series: Mapped[Series] = relationship(back_populates="images")
    source_file: Mapped[SourceFile] = relationship(back_populates="images")

    @property
    def calibrated(self) -> bool:
        return self.mm_per_px_x is not None and self.mm_per_px_y is not None


class Rater(Base):
    """Who drew a label: a person (``human``), or a label made from others (``consensus``,
    named ``consensus:METHOD``) or by a model (``model``, named ``model:RUN``)."""

    __tablename__ = "raters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="human")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    # the rater's own Label Studio server (``labelstudio push --url``); never a token
    labelstudio_url: Mapped[str | None] = mapped_column(String(512))


class Annotation(Base):
    """One version of one rater's label map for one image. Never updated: a changed label
    is a new row with the next version number."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("image_id", "rater_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False, index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False, index=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # itksnap, labelstudio, ...
    source_ref: Mapped[str | None] = mapped_column(String(256))
    mask_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    protocol: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    # Where the label started (all None: from nothing datatool knows of, e.g. an empty image).
    # A model draft: the Label Studio prediction the annotation was made from, or an ITK-SNAP
    # segmentation exported pre-filled with a run's draft.
    draft_version: Mapped[str | None] = mapped_column(String(128))  # the draft's model_version
    draft_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))  # when one of ours
    draft_hash: Mapped[str | None] = mapped_column(String(64))  # the draft's label map (store)
    draft_unchanged: Mapped[bool | None] = mapped_column(Boolean)  # accepted as drafted
    # How the link to the draft was found when no tool recorded it (None: recorded, e.g.
    # Label Studio's parent_prediction, the export's marker, the same label map as a draft):
    # "overlap" (close to a draft handed to the rater: IoU per structure in draft_iou) or
    # "accepted unchanged" (an ITK-SNAP draft stored as it is, sync itksnap --accept-unchanged)
    draft_link: Mapped[str | None] = mapped_column(String(32))
    draft_iou: Mapped[dict | None] = mapped_column(JSON)  # structure name -> IoU with the draft
    # Made with clicks (Label Studio's smart points, an interactive run's backend redrawing the
    # region): how many points; the run is draft_version/draft_run_id. None: no clicks.
    draft_clicks: Mapped[int | None] = mapped_column(Integer)
    image: Mapped[Image] = relationship()
    rater: Mapped[Rater] = relationship()
    structures: Mapped[list[StructureStats]] = relationship(back_populates="annotation")


class DraftHandout(Base):
    """A model draft datatool handed to a rater to start from (an ITK-SNAP segmentation
    exported pre-filled with it, a Label Studio prediction on the rater's task): which image,
    rater, run and label map (``mask_hash``, in the store). Sync recognises a draft by its
    content wherever the file comes from; ``file_sha256`` is the ITK-SNAP file export wrote,
    so a draft never saved is told from one saved as it is."""

    __tablename__ = "draft_handouts"
    __table_args__ = (UniqueConstraint("image_id", "rater_id", "mask_hash", "via"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False, index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False, index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    model_version: Mapped[str] = mapped_column(String(128), nullable=False)
    mask_hash: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    via: Mapped[str] = mapped_column(String(16), nullable=False)  # itksnap, labelstudio
    file_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class StructureStats(Base):
    """Per-structure statistics of an annotation, one row for every structure of the protocol
    (area 0 when the rater left it empty)."""

    __tablename__ = "structure_stats"
    __table_args__ = (UniqueConstraint("annotation_id", "structure"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(
        ForeignKey("annotations.id"), nullable=False, index=True
    )
    structure: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[int] = mapped_column(Integer, nullable=False)
    area_px: Mapped[int] = mapped_column(Integer, nullable=False)
    area_mm2: Mapped[float | None] = mapped_column(Float)
    components: Mapped[int] = mapped_column(Integer, nullable=False)
    x0: Mapped[int | None] = mapped_column(Integer)
    y0: Mapped[int | None] = mapped_column(Integer)
    x1: Mapped[int | None] = mapped_column(Integer)
    y1: Mapped[int | None] = mapped_column(Integer)
    annotation: Mapped[Annotation] = relationship(back_populates="structures")


class LabelStudioProject(Base):
    """A rater's own Label Studio project (one per rater: Community Label Studio cannot hide
    one rater's annotations from another inside a project), on the rater's server
    (``Rater.labelstudio_url``). The token is never stored."""

    __tablename__ = "labelstudio_projects"
    # unique per rater, not in the catalogue: each rater's server numbers its projects from 1
    __table_args__ = (
        UniqueConstraint("rater_id", "project_id", name="uq_labelstudio_projects_rater_project"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer, nullable=False)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False, index=True)
    title: Mapped[str] = mapped_column(String(256), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    rater: Mapped[Rater] = relationship()


class LabelStudioTask(Base):
    """Which image a task of a rater's project shows."""

    __tablename__ = "labelstudio_tasks"
    __table_args__ = (
        UniqueConstraint("project_id", "task_id"),
        UniqueConstraint("project_id", "image_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("labelstudio_projects.id"), nullable=False, index=True
    )
    task_id: Mapped[int] = mapped_column(Integer, nullable=False)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)


class AgreementSample(Base):
    """A saved draw of doubly labelled images, with the annotation versions it used, so the
    same agreement numbers can be printed again later."""

    __tablename__ = "agreement_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rater_a_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False)
    rater_b_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False)
    size: Mapped[int | None] = mapped_column(Integer)  # None: every doubly labelled image
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    n_images: Mapped[int] = mapped_column(Integer, nullable=False)
    # images whose labels started from a model draft were kept (None: drawn before drafts)
    include_prelabelled: Mapped[bool | None] = mapped_column(Boolean)
    # a rater's labels of gold-standard tasks were kept (None: drawn before gold tasks)
    include_gold: Mapped[bool | None] = mapped_column(Boolean)
    # at most one frame per cine loop (None: drawn before cines were sampled per loop)
    per_cine: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    items: Mapped[list[AgreementItem]] = relationship(
        back_populates="sample", order_by="AgreementItem.id"
    )


class AgreementItem(Base):
    __tablename__ = "agreement_items"
    __table_args__ = (UniqueConstraint("sample_id", "image_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(
        ForeignKey("agreement_samples.id"), nullable=False, index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    annotation_a_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), nullable=False)
    annotation_b_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), nullable=False)
    sample: Mapped[AgreementSample] = relationship(back_populates="items")


class GoldTask(Base):
    """An image handed to a rater as a gold-standard task: it already had a reference label
    (``reference_annotation_id``, a version of a consensus or of another rater), and went into
    the rater's queue looking like any other task. The rater's own label of it is scored
    against that version (``datatool raters``) and, unless asked, kept out of agreement
    samples and consensus. One row per (rater, image); never updated."""

    __tablename__ = "gold_tasks"
    __table_args__ = (UniqueConstraint("rater_id", "image_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False, index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False, index=True)
    reference_annotation_id: Mapped[int] = mapped_column(
        ForeignKey("annotations.id"), nullable=False
    )  # the reference version the rater's label is scored against
    tool: Mapped[str] = mapped_column(String(16), nullable=False)  # labelstudio, itksnap
    seed: Mapped[int] = mapped_column(Integer, nullable=False)  # of the draw that chose it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    rater: Mapped[Rater] = relationship()
    reference: Mapped[Annotation] = relationship()


class Split(Base):
    """A frozen patient-level split: never changed once created (new data, new split)."""

    __tablename__ = "splits"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    ratios: Mapped[str] = mapped_column(String(32), nullable=False)
    folds: Mapped[int] = mapped_column(Integer, nullable=False)
    stratify: Mapped[str | None] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(String(64))  # rater name of the labels
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    members: Mapped[list[SplitMember]] = relationship(back_populates="split")


class SplitMember(Base):
    __tablename__ = "split_members"
    __table_args__ = (UniqueConstraint("split_id", "image_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id"), nullable=False, index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), nullable=False)
    subset: Mapped[str] = mapped_column(String(8), nullable=False)  # train, val, test
    fold: Mapped[int | None] = mapped_column(Integer)  # cross-validation fold of non-test
    # the reference label version frozen with the split (None: the image had none)
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    split: Mapped[Split] = relationship(back_populates="members")


class Run(Base):
    """One training run of the segmentation model on a split (and fold)."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id"), nullable=False, index=True)
    split_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    fold: Mapped[int | None] = mapped_column(Integer)  # None: train on train, select on val
    cv_group: Mapped[str | None] = mapped_column(String(64), index=True)
    preset: Mapped[str] = mapped_column(String(16), nullable=False)
    config: Mapped[Any] = mapped_column(JSON, nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False)
    code_version: Mapped[str] = mapped_column(String(64), nullable=False)
    device: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # a RunStatus
    epochs_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_val_miou: Mapped[float | None] = mapped_column(Float)
    best_checkpoint: Mapped[str | None] = mapped_column(String(64))
    last_checkpoint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    epochs: Mapped[list[RunEpoch]] = relationship(back_populates="run", order_by="RunEpoch.epoch")


class RunEpoch(Base):
    __tablename__ = "run_epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), nullable=False, index=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    train_loss: Mapped[float] = mapped_column(Float, nullable=False)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_miou: Mapped[float | None] = mapped_column(Float)  # pooled over the set
    val_miou_per_image: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, nullable=False)
    run: Mapped[Run] = relationship(back_populates="epochs")


class Score(Base):
    """The scores of a run on a set (test, val or a fold), as the study reports them."""

    __tablename__ = "scores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), nullable=False, index=True)
    subset: Mapped[str] = mapped_column(String(16), nullable=False)
    results: Mapped[Any] = mapped_column(JSON, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Setting(Base):
    """A workspace setting that every user of the catalogue must share, such as the
    fingerprint of the pseudonym key (``key_fingerprint``: a keyed hash of a fixed text,
    never the key)."""

    __tablename__ = "settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class QAFlag(Base):
    """A reason to review one structure of one label version (``datatool qa``). At most one
    flag per (annotation, structure, reason): a re-run updates its evidence instead of adding
    another. Closed by a reviewer (fixed, accepted), by a new version of the label
    (superseded) or by a later check that no longer finds it (cleared); never deleted."""

    __tablename__ = "qa_flags"
    __table_args__ = (UniqueConstraint("annotation_id", "structure", "reason"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False, index=True)
    annotation_id: Mapped[int] = mapped_column(
        ForeignKey("annotations.id"), nullable=False, index=True
    )  # the label version flagged
    structure: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str] = mapped_column(String(24), nullable=False, index=True)  # a FlagReason
    severity: Mapped[float] = mapped_column(Float, nullable=False)  # how far past the threshold
    evidence: Mapped[Any] = mapped_column(JSON, nullable=False)  # the numbers behind it
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))  # the model, if it was used
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)  # a FlagStatus
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    annotation: Mapped[Annotation] = relationship()


class ReviewProject(Base):
    """A Label Studio project where a reviewer corrects one rater's flagged labels. Kept apart
    from the raters' own projects (``labelstudio_projects``): pushing or syncing a rater never
    touches it. ``store_as``: ``rater`` (the reviewer's label becomes the rater's next version)
    or ``reviewer`` (it is stored as the reviewer's own label)."""

    __tablename__ = "qa_review_projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"), nullable=False, index=True)
    store_as: Mapped[str] = mapped_column(String(16), nullable=False)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("raters.id"))
    title: Mapped[str] = mapped_column(String(256), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    rater: Mapped[Rater] = relationship(foreign_keys=[rater_id])
    reviewer: Mapped[Rater | None] = relationship(foreign_keys=[reviewer_id])


class ReviewTask(Base):
    """One flagged label version in a review project, and what its review brought back."""

    __tablename__ = "qa_review_tasks"
    __table_args__ = (
        UniqueConstraint("review_project_id", "task_id"),
        UniqueConstraint("review_project_id", "annotation_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_project_id: Mapped[int] = mapped_column(
        ForeignKey("qa_review_projects.id"), nullable=False, index=True
    )
    task_id: Mapped[int] = mapped_column(Integer, nullable=False)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), nullable=False)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), nullable=False)
    flags: Mapped[Any] = mapped_column(JSON, nullable=False)  # ids of the flags shown
    # the label version stored from the review (None: nothing stored yet)
    stored_annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer)  # the review synced last
    ls_updated: Mapped[str | None] = mapped_column(String(40))  # and when it was last changed
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class Received(Base):
    """One object a ``datatool listen`` acknowledged: from which calling AE title, when, and
    what ingest made of it. The receipt names its spool file (time and a random token), so an
    object is counted once however often the listener is killed and restarted. No patient
    data: the title, the time, the outcome and ingest's one-line reason."""

    __tablename__ = "received"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    receipt: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    calling_ae: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, nullable=False)
    # ingested | already_present | quarantined | conflict | rejected
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    ingested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)


class AuditEntry(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, nullable=False)
    who: Mapped[str] = mapped_column(String(64), nullable=False)
    command: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    details: Mapped[Any] = mapped_column(JSON, nullable=True)


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def audit(session: Session, command: str, action: str, **details: Any) -> None:
    """Add an audit entry in the caller's transaction. Details must not hold identity."""
    json.dumps(details)  # fail early on something that cannot be stored
    session.add(AuditEntry(who=current_user(), command=command, action=action, details=details))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The driver's own transaction handling is switched off (isolation_level=None) so that
        # every transaction starts with BEGIN IMMEDIATE: concurrent writers then queue on the
        # busy timeout instead of failing when a read lock cannot be upgraded.
        engine = create_engine(url, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # pragma: no cover - exercised by every test
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - exercised by every test
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)
