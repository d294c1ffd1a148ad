"""The test side of PS3.15 Annex E: Table E.1-1 read from tests/data/ps3_15_table_e1_1.csv (an
independent transcription of the standard, see its header), generated input instances, and the
checker that holds every output element to the table's action.

Nothing here imports the de-identifier's table (dicom-anonymizer) or its option file: the expected
action of every attribute comes from the CSV only.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

TABLE = Path(__file__).resolve().parents[2] / "data" / "ps3_15_table_e1_1.csv"
OPTION_COLUMNS = {
    "retain-longitudinal-full-dates": "retain_longitudinal_full_dates",
    "retain-longitudinal-modified-dates": "retain_longitudinal_modified_dates",
    "retain-patient-characteristics": "retain_patient_characteristics",
    "retain-device-identity": "retain_device_identity",
    "retain-institution-identity": "retain_institution_identity",
    "clean-descriptors": "clean_descriptors",
}
#: CID 7050, written out here (not taken from pydicom's concept dictionary, which the de-identifier uses)
CID_7050 = {
    "basic": "113100", "retain-longitudinal-full-dates": "113106", "retain-longitudinal-modified-dates": "113107",
    "retain-patient-characteristics": "113108", "retain-device-identity": "113109",
    "retain-institution-identity": "113112", "clean-descriptors": "113105", "retain-safe-private": "113111",
}


@dataclass(frozen=True)
class Row:
    tag: str  # "GGGGEEEE", X for wildcard digits
    name: str
    basic: str
    options: dict[str, str]

    def matches(self, tag: int) -> bool:
        text = f"{tag:08X}"
        return all(p in ("X", t) for p, t in zip(self.tag, text, strict=True))


def load_table() -> list[Row]:
    lines = [ln for ln in TABLE.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    rows = []
    for r in csv.DictReader(lines):
        if r["tag"] == "gggg,eeee":
            continue  # private attributes: checked on their own
        rows.append(Row(r["tag"].replace(",", "").upper(), r["name"], r["basic"],
                        {k: v for k, v in r.items() if k not in ("tag", "name", "basic") and v}))
    return rows


TABLE_ROWS = load_table()
EXACT = {int(r.tag, 16): r for r in TABLE_ROWS if "X" not in r.tag}
RANGED = [r for r in TABLE_ROWS if "X" in r.tag]


def expected_action(tag: int, options: set[str]) -> str | None:
    """The action Table E.1-1 requires for `tag` with `options` selected (K beats C beats Basic)."""
    row = EXACT.get(tag) or next((r for r in RANGED if r.matches(tag)), None)
    if row is None:
        return None
    found = {row.options.get(OPTION_COLUMNS[o]) for o in options} - {None}
    if "K" in found:
        return "K"
    if "C" in found:
        return "C"
    return row.basic


# --- inputs ---------------------------------------------------------------------------------------

PATIENT = "Doe^Johnathan^Q"
PATIENT_WORDS = ("Doe", "Johnathan")
PATIENT_ID = "MRN-4711-0815"
ROOT = "1.2.40.0.99.4711."  # not pydicom's root: its implementation class UID is in every output


def uid(n: int | str) -> str:
    return f"{ROOT}{n}"


def _person(name: str, ident: str) -> Dataset:
    item = Dataset()
    item.PatientName = name
    item.PatientID = ident
    item.IssuerOfPatientID = "St Aldhelm"
    return item


def clinical_instance(modality: str = "CT", bia: str | None = None, series: int = 1, number: int = 1,
                      rows: int = 8) -> Dataset:
    """An image with identifying content where the profile has to look for it: nested sequences,
    private attributes, dates and times, names in free text."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = uid(f"3.{series}.{number}")
    ds.StudyInstanceUID = uid("1")
    ds.SeriesInstanceUID = uid(f"2.{series}")
    ds.FrameOfReferenceUID = uid("4")
    ds.Modality = modality
    if bia is not None:
        ds.BurnedInAnnotation = bia
    ds.PatientName = PATIENT
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19610412"
    ds.PatientSex = "M"
    ds.PatientAge = "063Y"
    ds.PatientWeight = "81.5"
    ds.PatientAddress = "12 Mill Lane, Aldhelm"
    ds.OtherPatientNames = "Doe^John"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.SeriesDate = "20240315"
    ds.ContentDate = "20240315"
    ds.ContentTime = "101732.5"
    ds.AcquisitionDateTime = "20240315101600"
    ds.AccessionNumber = "ACC-998877"
    ds.StudyID = "S-42"
    ds.InstitutionName = "St Aldhelm University Hospital"
    ds.InstitutionAddress = "1 Hospital Road"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PerformingPhysicianName = "Wilson^James"
    ds.OperatorsName = "Tech^Tom"
    ds.StationName = "CT-ROOM-3"
    ds.DeviceSerialNumber = "SN-55501"
    ds.Manufacturer = "ACME"
    ds.StudyDescription = "CT chest for Johnathan Doe (MRN-4711-0815)"
    ds.SeriesDescription = "Axial 1mm Doe"
    ds.ImageComments = "Johnathan Doe moved; see Dr House"
    ds.PatientComments = "Doe prefers morning appointments"
    ds.InstanceNumber = number
    ds.SeriesNumber = series
    # nested sequences with identifying content
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = uid("9.1")
    ds.ReferencedPatientSequence = Sequence([ref])
    req = Dataset()
    req.RequestedProcedureID = "RP-77"
    req.ScheduledProcedureStepID = "SPS-78"
    req.RequestedProcedureDescription = "CT chest Johnathan Doe"
    req.ReasonForTheRequestedProcedure = "follow-up of Doe's nodule"
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    inner.ReferencedSOPInstanceUID = uid("9.2")
    req.ReferencedStudySequence = Sequence([inner])
    req.private_block(0x0011, "NESTED VENDOR", create=True).add_new(0x01, "PN", "Doe^Johnathan")
    ds.RequestAttributesSequence = Sequence([req])
    ds.OtherPatientIDsSequence = Sequence([_person("Doe^John", "OTHER-1234"), _person("Doe^J", "OTHER-5678")])
    img = Dataset()
    img.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    img.ReferencedSOPInstanceUID = uid(f"3.{series}.{number + 1}")
    ds.ReferencedImageSequence = Sequence([img])
    src = Dataset()
    src.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    src.ReferencedSOPInstanceUID = uid(f"3.{series}.{number + 1}")
    ds.SourceImageSequence = Sequence([src])
    # private attributes: one on the keep-list of the tests, one that must go (it holds the name)
    keep = ds.private_block(0x0029, "SAFE VENDOR", create=True)
    keep.add_new(0x08, "LO", "kernel B30f")
    gone = ds.private_block(0x0009, "GEMS_IDEN_01", create=True)
    gone.add_new(0x01, "LO", "Johnathan Doe")
    gone.add_new(0x02, "LO", "kept nowhere")
    # pixels
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(rows * rows * 2)
    return ds


def _value(vr: str, n: int) -> object:
    if vr == "PN":
        return "Doe^Johnathan"
    if vr == "DA":
        return "20240315"
    if vr == "TM":
        return "101500"
    if vr == "DT":
        return "20240315101500"
    if vr == "UI":
        return uid(f"7.{n}")
    if vr == "AS":
        return "045Y"
    if vr in ("DS", "IS"):
        return "7"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("FL", "FD"):
        return 7.0
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return b"\x01\x02\x03\x04"
    if vr == "AT":
        return 0x00100010
    if vr == "CS":
        return "VALUE7"
    if vr == "AE":
        return "STATION7"
    if vr == "UR":
        return "http://doe.example/johnathan"
    if vr == "SH":
        return f"Doe {n}"
    return f"Johnathan Doe {n}"  # LO ST LT UT UC


def every_table_attribute(modality: str = "MR") -> Dataset:
    """One instance holding every attribute of Table E.1-1 that pydicom's dictionary knows (with a
    value of its VR; a sequence with one item holding a name, an id, a date and a UID), so each row's
    action is exercised at the top level and inside a sequence."""
    ds = clinical_instance(modality=modality, bia="NO")
    for n, tag in enumerate(sorted(EXACT)):
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            continue  # command and file meta groups; digital signatures and padding are not data set content
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            continue
        if tag in ds or tag == 0x7FE00010:
            continue
        if vr == "SQ":
            item = Dataset()
            item.PatientName = "Doe^Johnathan"
            item.PatientID = PATIENT_ID
            item.ReferencedSOPInstanceUID = uid(f"8.{n}")
            item.StudyDate = "20240316"
            ds.add_new(tag, "SQ", Sequence([item]))
        else:
            ds.add_new(tag, vr, _value(vr, n))
    return ds


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.SourceApplicationEntityTitle = "ALDHELM_PACS"
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))


# --- the checker ----------------------------------------------------------------------------------


@dataclass
class ShareCheck:
    """Holds the outputs of one share to Table E.1-1; remembers the UID mapping and the date shift
    seen so far, so consistency within the share is checked across instances."""

    options: set[str]
    keep_private: set[tuple[int, str, int]] = field(default_factory=set)
    uids: dict[str, str] = field(default_factory=dict)
    shift_days: set[int] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)  # the action codes seen, for coverage asserts
    problems: list[str] = field(default_factory=list)

    def instance(self, original: Dataset, output: Dataset) -> None:
        self._dataset(original, output, "")
        self._private(original, output)
        if output.get("PatientIdentityRemoved") != "YES":
            self.problems.append("Patient Identity Removed is not YES")
        seq = output.get("DeidentificationMethodCodeSequence") or []
        got = {(i.CodeValue, i.CodingSchemeDesignator) for i in seq}
        want = {(CID_7050["basic"], "DCM")} | {(CID_7050[o], "DCM") for o in self.options}
        if self.keep_private:
            want.add((CID_7050["retain-safe-private"], "DCM"))
        if got != want:
            self.problems.append(f"De-identification Method Code Sequence {sorted(got)} != {sorted(want)}")
        meta_uid = output.file_meta.get("MediaStorageSOPInstanceUID")
        if meta_uid != output.SOPInstanceUID:
            self.problems.append("file meta Media Storage SOP Instance UID differs from SOP Instance UID")
        if "SourceApplicationEntityTitle" in output.file_meta:
            self.problems.append("file meta still names the sending AE title")

    def _dataset(self, original: Dataset, output: Dataset, path: str) -> None:
        for elem in original:
            tag = int(elem.tag)
            if elem.tag.is_private:
                continue
            where = f"{path}{keyword_for_tag(tag) or f'({tag >> 16:04X},{tag & 0xFFFF:04X})'}"
            action = expected_action(tag, self.options)
            out = output.get(elem.tag)
            if action is None:
                if elem.VR == "SQ" and out is not None:
                    self._items(elem, out, where)
                elif elem.VR == "UI" and out is not None:
                    self._uid(elem, out, where, required=False)
                continue
            self.checked.add(action)
            self._one(action, elem, out, where)

    def _items(self, elem, out, where: str) -> None:  # type: ignore[no-untyped-def]
        if len(out.value) != len(elem.value):
            self.problems.append(f"{where}: {len(out.value)} items, input had {len(elem.value)}")
            return
        for i, (a, b) in enumerate(zip(elem.value, out.value, strict=True)):
            self._dataset(a, b, f"{where}[{i}].")

    def _empty(self, out) -> bool:  # type: ignore[no-untyped-def]
        return out.value in (None, "", b"", []) or (out.VR == "SQ" and len(out.value) == 0)

    def _differs(self, elem, out) -> bool:  # type: ignore[no-untyped-def]
        return elem.VR == "SQ" or str(out.value) != str(elem.value)

    def _one(self, action: str, elem, out, where: str) -> None:  # type: ignore[no-untyped-def]
        bad = self.problems.append
        if action == "X":
            if out is not None:
                bad(f"{where}: X (remove) but present: {out.value!r}")
        elif action == "K":
            if out is None:
                bad(f"{where}: K (keep) but removed")
            elif elem.VR == "SQ":
                self._items(elem, out, where)
            elif out.value != elem.value:
                bad(f"{where}: K (keep) but changed {elem.value!r} -> {out.value!r}")
        elif action == "U":
            self._uid(elem, out, where, required=True)
        elif action == "X/Z/U*":
            if out is not None and not self._empty(out):
                if elem.VR == "SQ":
                    self._items(elem, out, where)
                else:
                    self._uid(elem, out, where, required=True)
        elif action == "C":
            self._clean(elem, out, where)
        else:  # Z, D and the combinations of X, Z, D
            allowed = set(action.split("/"))
            if out is None:
                if "X" not in allowed:
                    bad(f"{where}: {action} but removed")
                return
            if self._empty(out):
                if "Z" not in allowed:
                    bad(f"{where}: {action} but zero length")
                return
            if not ({"D", "Z"} & allowed):
                bad(f"{where}: {action} but a value is present: {out.value!r}")
            elif elem.VR == "SQ":
                self._items(elem, out, where)  # a dummy sequence: its content still follows the table
            elif elem.VR == "UI":
                self._uid(elem, out, where, required=True)
            elif not self._differs(elem, out):
                bad(f"{where}: {action} but the original value is still there: {out.value!r}")

    def _uid(self, elem, out, where: str, required: bool) -> None:  # type: ignore[no-untyped-def]
        if out is None or self._empty(out):
            if required:
                self.problems.append(f"{where}: U but {'removed' if out is None else 'emptied'}")
            return
        before = list(elem.value) if elem.VM > 1 else [elem.value]
        after = list(out.value) if out.VM > 1 else [out.value]
        for a, b in zip(before, after, strict=False):
            a, b = str(a), str(b)
            if not required and UID(a).name != a:
                continue  # a registered UID (SOP class ...) the table does not list: may stay
            if a == b:
                self.problems.append(f"{where}: UID {a} not replaced")
            elif self.uids.setdefault(a, b) != b:
                self.problems.append(f"{where}: UID {a} -> {b}, elsewhere in the share -> {self.uids[a]}")
            elif not re.fullmatch(r"[0-9]+(\.[0-9]+)*", b) or len(b) > 64:
                self.problems.append(f"{where}: {b!r} is not a valid UID")

    def _clean(self, elem, out, where: str) -> None:  # type: ignore[no-untyped-def]
        if out is None or self._empty(out):
            return  # removing is always a clean value
        if elem.VR == "SQ":
            self._items(elem, out, where)
        elif elem.VR in ("DA", "DT"):
            if "retain-longitudinal-modified-dates" not in self.options:
                self.problems.append(f"{where}: C of a date without the modified-dates option")
                return
            a = dt.datetime.strptime(str(elem.value)[:8], "%Y%m%d")
            b = dt.datetime.strptime(str(out.value)[:8], "%Y%m%d")
            if a == b:
                self.problems.append(f"{where}: date {elem.value} not shifted")
            self.shift_days.add((b - a).days)
            if len(self.shift_days) > 1:
                self.problems.append(f"{where}: dates shifted by different amounts within a share: {self.shift_days}")
        elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "UC", "PN"):
            text = str(out.value)
            for word in (*PATIENT_WORDS, PATIENT_ID):
                if word.lower() in text.lower():
                    self.problems.append(f"{where}: C (clean) but {word!r} is still in {text!r}")

    def _private(self, original: Dataset, output: Dataset) -> None:
        for elem in output:
            if elem.VR == "SQ":
                for item in elem.value:  # private attributes inside sequences go too
                    self._private(Dataset(), item)
            if not elem.tag.is_private or elem.tag.element < 0x1000:
                continue
            creator = output.get((elem.tag.group, elem.tag.element >> 8))
            key = (elem.tag.group, str(creator.value if creator else "").upper(), elem.tag.element & 0xFF)
            if key not in self.keep_private:
                self.problems.append(f"private {elem.tag} ({key[1]}) kept without a keep-list entry")
        for group, creator, element in self.keep_private:
            try:
                before = original.private_block(group, creator)[element].value
            except KeyError:
                continue
            try:
                after = output.private_block(group, creator)[element].value
            except KeyError:
                self.problems.append(f"private ({group:04X},{creator},{element:02X}) on the keep-list but removed")
                continue
            if after != before:
                self.problems.append(f"private ({group:04X},{creator},{element:02X}) changed")
