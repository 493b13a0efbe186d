"""``pull --dimse``: a PACS without DICOMweb, by C-FIND (study, then image level) and C-GET
through pynetdicom. One association per pull; datatool takes the Storage SCP role for the
ultrasound and Secondary Capture classes in every common transfer syntax
(datatool.core.dimse), so the PACS sends each file as stored. Each C-STORE sub-operation's
bytes (with their file meta) go to the pull's spool before success is answered.

Orthanc (and most PACS) answer C-GET only to a calling AE title they know: register
datatool's (``--calling-ae``, default DATATOOL) with the PACS, at this machine's address.
"""

from __future__ import annotations

from collections.abc import Callable

from datatool.core.dimse import STORAGE_CLASSES, TRANSFER_SYNTAXES, Peer, status_text
from datatool.core.errors import DatatoolError
from datatool.ingest.pull import FoundInstance, FoundStudy, Query, RetrieveError

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve - GET
TIMEOUT_S = 60


class DimseSource:
    """C-FIND + C-GET on one association, opened on first use."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.name = str(peer)
        self._assoc = None
        self._sink: Callable[[bytes], None] | None = None
        self._failed_store = ""

    # ------------------------------------------------------------------ association
    def _association(self):
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        from pynetdicom import AE, build_role, evt

        ae = AE(ae_title=self.peer.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        ae.add_requested_context(FIND_MODEL)
        ae.add_requested_context(GET_MODEL)
        for sop_class in STORAGE_CLASSES:
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, syntax)
        roles = [build_role(c, scp_role=True) for c in STORAGE_CLASSES]
        assoc = ae.associate(
            self.peer.host,
            self.peer.port,
            ae_title=self.peer.called_ae,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise DatatoolError(
                f"{self.name}: the PACS {why} (check HOST:PORT, --called-ae, and that it "
                f"knows the calling AE title {self.peer.calling_ae} at this machine's address)"
            )
        self._assoc = assoc
        return assoc

    def _on_store(self, event) -> int:
        try:
            data = event.encoded_dataset()
            if self._sink is None:
                return 0xA700
            self._sink(data)
        except Exception as exc:  # answered as a failure, reported once
            self._failed_store = f"{type(exc).__name__}: {exc}"
            return 0xA700
        return 0x0000

    # ------------------------------------------------------------------ queries
    def _find(self, identifier) -> list:
        assoc = self._association()
        found = []
        for status, answer in assoc.send_c_find(identifier, FIND_MODEL):
            if status is None or "Status" not in status:
                raise RetrieveError("the PACS did not answer the C-FIND (association lost)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and answer is not None:
                found.append(answer)
            elif code != 0x0000:
                raise RetrieveError(f"C-FIND answered {status_text(code)}")
        return found

    def search(self, query: Query) -> list[FoundStudy]:
        from pydicom import Dataset

        runs = list(query.studies) or [""]
        studies: dict[str, FoundStudy] = {}
        for uid in runs:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = uid
            ds.NumberOfStudyRelatedInstances = ""
            ds.ModalitiesInStudy = query.modality or ""
            ds.StudyDate = query.date_range() or ""
            try:
                answers = self._find(ds)
            except RetrieveError as exc:
                raise DatatoolError(f"{self.name}: study search: {exc}") from None
            for answer in answers:
                found_uid = str(answer.get("StudyInstanceUID", "") or "")
                count = answer.get("NumberOfStudyRelatedInstances", None)
                if found_uid:
                    studies[found_uid] = FoundStudy(
                        found_uid, int(count) if count not in (None, "") else None
                    )
        return list(studies.values())

    def instances(self, study_uid: str) -> list[FoundInstance]:
        from pydicom import Dataset

        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.SOPInstanceUID = ""
        return [
            FoundInstance(str(a.get("SeriesInstanceUID", "")), str(a.SOPInstanceUID))
            for a in self._find(ds)
            if a.get("SOPInstanceUID")
        ]

    # ------------------------------------------------------------------ retrieval
    def _get(self, identifier) -> None:
        assoc = self._association()
        final = None
        failed = 0
        for status, _answer in assoc.send_c_get(identifier, GET_MODEL):
            if status is None or "Status" not in status:
                raise RetrieveError("the PACS did not answer the C-GET (association lost)")
            code = int(status.Status)
            if code not in (0xFF00, 0xFF01):
                final = code
                failed = int(status.get("NumberOfFailedSubOperations", 0) or 0)
        if final not in (0x0000, None) or failed:
            extra = f"; storing here failed: {self._failed_store}" if self._failed_store else ""
            raise RetrieveError(f"C-GET answered {status_text(final)}, {failed} failed{extra}")

    def retrieve(
        self, study_uid: str, only: list[FoundInstance] | None, sink: Callable[[bytes], None]
    ) -> None:
        from pydicom import Dataset

        self._sink = sink
        try:
            if only is None:
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.StudyInstanceUID = study_uid
                self._get(ds)
                return
            for inst in only:
                ds = Dataset()
                ds.QueryRetrieveLevel = "IMAGE"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = inst.series_uid
                ds.SOPInstanceUID = inst.sop_uid
                self._get(ds)
        finally:
            self._sink = None

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
