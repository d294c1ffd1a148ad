"""De-identification of DICOM instances on the way out of a share: PS3.15 Annex E, the Basic
Application Level Confidentiality Profile with the options the policy selects.

Where the profile comes from: the Basic Profile action of every attribute of Table E.1-1 is the
``dicom-anonymizer`` library's table for the 2024b edition (``dicomfields_2024b``: generated from the
standard, kept per edition by its maintainers), not a list written here; the option columns the
policy may select come from the same table of the standard (``annex_e_options.csv`` beside this
module, 2024b/2024e). This module only applies them, with what the library's own engine lacks for a
share: actions inside nested sequences, UIDs keyed by a per-share secret, per-share date shifting,
a private-attribute keep-list and the burned-in-annotation gate. The tests check every output
against an independent transcription of Table E.1-1 (tests/data/ps3_15_table_e1_1.csv).

How the combined codes are resolved without knowing each IOD's attribute types: ``X/Z`` -> Z (present,
empty), ``X/D``, ``Z/D`` and ``X/Z/D`` -> D (a dummy value, so a Type 1 attribute stays valid), and
``X/Z/U*`` -> the sequence is kept and the UIDs in it replaced. ``D``, ``K`` and ``C`` on a sequence
keep its items and apply the table inside them. ``C`` (clean) shifts dates (the modified-dates
option), removes identifying words from free text (every person name, patient id, accession number
and birth date found in the instance) and replaces AE titles by a dummy.

Why UIDs are HMAC-SHA256(share secret, UID) under the 2.25 root: the same study shared twice gives
two unlinkable sets of UIDs, the references between the instances of one share stay consistent, and
nobody without the share's secret can map a UID back (or test a guess). Any UID that is not a
registered DICOM UID (a SOP class, a transfer syntax) is replaced, even where the table does not list
the attribute: an instance UID left anywhere would link the share to the original study.

Why damaged content is refused rather than passed through: an element whose length field swallowed
its neighbours is kept as it was read (the table never decodes what it leaves alone), and would carry
the swallowed attributes out unread. A VR other than the dictionary's, a binary value whose length
does not fit the dictionary's value multiplicity, or control bytes in a string are its marks; a
public tag no dictionary knows is removed. Any other error refuses the instance: nothing leaves half
de-identified.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import hmac
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from bridge.errors import InputError
from bridge.policy.sharing import DeidOption, DeidProfile

#: the edition of Table E.1-1 the Basic Profile actions are taken from (dicom-anonymizer's name)
EDITION = "dicomfields_2024b"
MIN_SECRET_BYTES = 16

#: dicom-anonymizer's action lists -> the Table E.1-1 action codes
_CATEGORIES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
               "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
#: how a combined code is applied (see the module docstring)
_RESOLVED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}

#: CID 7050 (De-identification Method): the profile and each option, as pydicom's concept dictionary names them
_PROFILE_CODE = codes.DCM.BasicApplicationConfidentialityProfile
_OPTION_CODES = {
    DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: codes.DCM.RetainPatientCharacteristicsOption,
    DeidOption.RETAIN_DEVICE_IDENTITY: codes.DCM.RetainDeviceIdentityOption,
    DeidOption.RETAIN_INSTITUTION_IDENTITY: codes.DCM.RetainInstitutionIdentityOption,
    DeidOption.CLEAN_DESCRIPTORS: codes.DCM.CleanDescriptorsOption,
}
_SAFE_PRIVATE_CODE = codes.DCM.RetainSafePrivateOption

_TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC"}
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "DS": "0", "IS": "0",
            "UR": "http://anonymized.invalid", "AE": "ANONYMIZED", "CS": "ANONYMIZED"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"}
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
#: bytes no string value holds (TAB, LF, FF, CR and ESC of ISO 2022 are allowed): a length field that
#: swallowed its neighbours, or a damaged file
_DAMAGED = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_DAMAGED_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
_FIXED_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}


class DeidentificationRefused(InputError):
    """An instance that must not leave de-identified as asked: the message names the instance
    (its original SOP Instance UID, for the sharer and the audit trail) and the reason."""


@dataclass(frozen=True)
class _Table:
    exact: dict[int, str]
    ranged: tuple[tuple[int, int, int, int, str], ...]  # group, element, group mask, element mask, code

    def get(self, tag: int) -> str | None:
        code = self.exact.get(tag)
        if code is not None:
            return code
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, gm, em, c in self.ranged:
            if group & gm == g & gm and element & em == e & em:
                return c
        return None


@functools.cache
def basic_profile() -> _Table:
    """Table E.1-1's Basic Profile column, from dicom-anonymizer."""
    lists = dicom_anonymization_database_selector(EDITION)
    exact: dict[int, str] = {}
    ranged: list[tuple[int, int, int, int, str]] = []
    for category, code in _CATEGORIES.items():
        for entry in lists[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = code
            else:
                ranged.append((entry[0], entry[1], entry[2], entry[3], code))
    return _Table(exact, tuple(ranged))


@functools.cache
def option_columns() -> dict[DeidOption, dict[int, str]]:
    """The option columns of Table E.1-1 for the options a share may select."""
    text = resources.files(__package__).joinpath("annex_e_options.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    out: dict[DeidOption, dict[int, str]] = {o: {} for o in DeidOption}
    for row in rows:
        tag = row["tag"].replace(",", "")
        if not re.fullmatch(r"[0-9A-F]{8}", tag):
            continue  # repeating groups (curves, overlays): only the graphics option names them
        for option in DeidOption:
            code = row[option.value.replace("-", "_")].strip()
            if code:
                out[option][int(tag, 16)] = code
    return out


def share_uid(secret: bytes, uid: str) -> str:
    """The UID that stands for `uid` in the share keyed by `secret` (HMAC-SHA256, 128 bits, 2.25 root)."""
    digest = hmac.new(secret, uid.strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def date_offset_days(secret: bytes) -> int:
    """The share's date shift: whole days back, 365 to 3650, the same for every instance of the share."""
    digest = hmac.new(secret, b"pacs-bridge date shift", hashlib.sha256).digest()
    return -(365 + int.from_bytes(digest[:4], "big") % (3650 - 365 + 1))


def _registered_raw(raw: DataElement | RawDataElement) -> bool:
    """Every value of a still-undecoded UI element is a registered UID (False: decode and look)."""
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return False
    try:
        text = raw.value.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(_registered(v.strip()) for v in text.split("\\"))


def _registered(uid: str) -> bool:
    """A UID the standard defines (SOP classes, transfer syntaxes, coding schemes): not identifying."""
    return UID(uid).name != uid


class Deidentifier:
    """De-identifies the instances of one share: the same `secret` for every instance of the share
    (consistent UIDs and date shift), a fresh random one per share (at least 16 bytes)."""

    def __init__(self, profile: DeidProfile, secret: bytes):
        if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the share secret must be at least {MIN_SECRET_BYTES} random bytes")
        self.profile = profile
        self._secret = bytes(secret)
        self._basic = basic_profile()
        columns = option_columns()
        self._options = [columns[o] for o in sorted(profile.options)]
        self._offset = dt.timedelta(days=date_offset_days(self._secret))
        self._keep = {(p.group, p.creator.strip().upper(), p.element) for p in profile.keep_private}
        self._uids: dict[str, str] = {}
        self._current = ""  # the SOP Instance UID being de-identified, for refusals
        self._method_codes = [_PROFILE_CODE] + [_OPTION_CODES[o] for o in sorted(profile.options)] + (
            [_SAFE_PRIVATE_CODE] if self._keep else [])
        self._cleans_text = any(code == "C" and _dictionary_vr(tag) in _TEXT_VRS
                                for column in self._options for tag, code in column.items())

    # --- the public entry points ---------------------------------------------------------------

    def instance(self, data: bytes) -> bytes:
        """De-identify one DICOM file (Part 10 bytes) and return the de-identified file."""
        try:
            ds = dcmread(io.BytesIO(data), force=False)
        except Exception as exc:  # any parse failure of a damaged file: nothing leaves
            raise DeidentificationRefused(f"not a DICOM instance: {type(exc).__name__}: {exc}",
                                          subject="(unreadable)") from None
        try:
            self.dataset(ds)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
        except DeidentificationRefused:
            raise
        except Exception as exc:  # a damaged element found while de-identifying: fail closed
            original = self._current or "(unreadable SOP Instance UID)"
            raise DeidentificationRefused(f"instance {original}: cannot be de-identified: "
                                          f"{type(exc).__name__}: {exc}", subject=original) from None
        return out.getvalue()

    def dataset(self, ds: Dataset) -> Dataset:
        """De-identify `ds` in place (and return it). A burned-in image is refused before anything
        changes; a damaged element may be found midway, so after DeidentificationRefused the dataset
        is half done and must be discarded (``instance`` never returns anything then)."""
        self._current = ""
        original = str(ds.get("SOPInstanceUID", "") or "")
        if not original:
            raise DeidentificationRefused("instance without SOP Instance UID: refused", subject="(no SOP Instance UID)")
        self._check_burned_in(ds, original)
        self._current = original
        # collected before anything changes (a name removed first must still be cleaned from text later),
        # and only when an option cleans free text
        identifiers = _pattern(_identifying_words(ds)) if self._cleans_text else None
        self._apply(ds, identifiers)
        self._mark(ds)
        self._file_meta(ds)
        return ds

    # --- burned-in annotation --------------------------------------------------------------------

    def _check_burned_in(self, ds: Dataset, original: str) -> None:
        value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if value == "YES":
            raise DeidentificationRefused(
                f"instance {original}: Burned In Annotation is YES (text in the pixels cannot be removed)",
                subject=original)
        if value == "NO":
            return
        if value:
            raise DeidentificationRefused(
                f"instance {original}: Burned In Annotation is {value!r}, neither YES nor NO", subject=original)
        if modality in self.profile.refuse_modalities_without_bia or not modality:
            raise DeidentificationRefused(
                f"instance {original}: Burned In Annotation absent and modality {modality or '(none)'} is refused "
                "(sharing.deidentification.burned_in_annotation.refuse_when_absent)", subject=original)

    # --- the table, recursively ------------------------------------------------------------------

    def _action(self, tag: int) -> str | None:
        found = [column[tag] for column in self._options if tag in column]
        if "K" in found:
            return "K"
        if "C" in found:
            return "C"
        code = self._basic.get(tag)
        return _RESOLVED.get(code, code) if code else None

    def _apply(self, ds: Dataset, words: re.Pattern[str] | None) -> None:
        self._private(ds)
        for raw in list(ds.elements()):  # unconverted: what the table leaves alone is never decoded
            tag = raw.tag
            vr = _vr(raw)
            if not tag.is_private and not _in_dictionary(int(tag)):
                del ds[tag]  # a public tag no DICOM dictionary knows: neither standard nor private
                continue
            damage = _damage(raw, vr)
            if damage:
                raise DeidentificationRefused(f"instance {self._current}: damaged value in {tag} ({damage}): refused",
                                              subject=self._current)
            code = self._action(int(tag))
            if (code is None and vr not in ("SQ", "UI")) or (code == "K" and vr != "SQ"):
                continue  # not listed (and no UID, no sequence to look into), or kept
            if code is None and vr == "UI" and _registered_raw(raw):
                continue  # a SOP class, a transfer syntax: left undecoded
            if code == "X":
                del ds[tag]
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                if code == "Z":
                    elem.value = Sequence()
                else:  # K, C, D, U*, or not listed: keep the items, apply the table inside them
                    for item in elem.value:
                        self._apply(item, words)
            elif code == "Z":
                elem.value = elem.empty_value
            elif elem.VR == "UI":  # U, U*, D or C of a UID, or a UID the table does not list
                self._replace_uids(elem, listed=code is not None)
            elif code == "D":
                self._dummy(ds, tag, elem)
            elif code == "C":
                self._clean(ds, tag, elem, words)

    def _private(self, ds: Dataset) -> None:
        """Remove private attributes except those on the keep-list (and the creators they need)."""
        tags = list(ds.keys())
        private = [t for t in tags if t.is_private]
        keep: set[BaseTag] = set()
        keep_creators: set[BaseTag] = set()
        for tag in private:
            if tag.element < 0x1000:
                continue
            creator_tag = Tag(tag.group, tag.element >> 8)
            creator = ds.get(creator_tag)
            name = str(creator.value).strip().upper() if creator is not None and creator.value else ""
            if name and (tag.group, name, tag.element & 0xFF) in self._keep:
                keep.add(tag)
                keep_creators.add(creator_tag)
        for tag in private:
            if tag not in keep and tag not in keep_creators:
                del ds[tag]

    def _replace_uids(self, elem: DataElement, listed: bool) -> None:
        def one(value: str) -> str:
            value = str(value)
            if not value or (not listed and _registered(value)):
                return value
            if value not in self._uids:
                self._uids[value] = share_uid(self._secret, value)
            return self._uids[value]

        if elem.VM > 1:
            elem.value = [one(v) for v in elem.value]
        elif elem.value:
            elem.value = one(elem.value)

    def _dummy(self, ds: Dataset, tag: BaseTag, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "PN" or vr in _TEXT_VRS:
            elem.value = _DUMMY_TEXT
        elif vr in _DUMMIES:
            elem.value = _DUMMIES[vr]
        elif vr in _NUMERIC_VRS:
            elem.value = 0
        elif vr in _BINARY_VRS:
            elem.value = b"\x00\x00"
        else:
            del ds[tag]

    def _clean(self, ds: Dataset, tag: BaseTag, elem: DataElement, words: re.Pattern[str] | None) -> None:
        vr = elem.VR
        if vr in ("DA", "DT"):
            self._shift(ds, tag, elem)
        elif vr == "TM":
            return  # whole-day shifts leave the time of day as it was
        elif vr in _TEXT_VRS or vr == "PN":
            if vr == "PN":
                elem.value = _DUMMY_TEXT
            elif words is not None and elem.value:
                values = elem.value if elem.VM > 1 else [elem.value]
                cleaned = [words.sub("***", str(v)) for v in values]
                elem.value = cleaned if elem.VM > 1 else cleaned[0]
        elif vr == "AE":
            elem.value = _DUMMIES["AE"]
        elif vr in _BINARY_VRS:
            del ds[tag]  # a binary value (a signed timestamp) cannot be cleaned: removed
        # CS, numbers: coded values with no free text: kept

    def _shift(self, ds: Dataset, tag: BaseTag, elem: DataElement) -> None:
        values = elem.value if elem.VM > 1 else [elem.value]
        out = []
        for v in values:
            text = str(v or "")
            try:
                day = dt.datetime.strptime(text[:8], "%Y%m%d").date() + self._offset
            except ValueError:
                elem.value = elem.empty_value  # not a date we can shift: emptied rather than kept
                return
            out.append(day.strftime("%Y%m%d") + text[8:])
        elem.value = out if elem.VM > 1 else out[0]

    # --- what the recipient is told ----------------------------------------------------------------

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        items = []
        for code in self._method_codes:  # our own constants, valid for their VRs: built without re-validation
            items.append(Dataset({
                Tag(tag): DataElement(tag, vr, value, validation_mode=config.IGNORE)
                for tag, vr, value in ((0x00080100, "SH", code.value), (0x00080102, "SH", code.scheme_designator),
                                       (0x00080104, "LO", code.meaning[:64]))
            }))
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.DeidentificationMethod = [c.meaning[:64] for c in self._method_codes]
        options = self.profile.options
        if DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        elif DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _file_meta(self, ds: Dataset) -> None:
        """A new file meta header: the original names the sending application and AE title."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", old.get("MediaStorageSOPClassUID"))
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or "1.2.840.10008.1.2.1"
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta


def _identifying_words(ds: Dataset) -> frozenset[str]:
    """Every person name part, patient/other id, accession number and birth date in the instance:
    what ``C`` removes from free text."""
    words: set[str] = set()

    def add(value: object) -> None:
        for v in value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]:
            for part in re.split(r"[\^=\s,]+", str(v or "")):
                if len(part.strip(".-")) >= 2:
                    words.add(part.strip(".-"))

    def visit(d: Dataset) -> None:
        for raw in d.elements():
            vr = _vr(raw)
            if vr == "PN" or raw.tag in _ID_TAGS:
                add(d[raw.tag].value)
            elif vr == "SQ":
                for item in d[raw.tag].value:
                    visit(item)

    visit(ds)
    return frozenset(words)


@functools.lru_cache(maxsize=64)
def _pattern(words: frozenset[str]) -> re.Pattern[str] | None:
    """The words as one case-insensitive whole-word pattern (cached: a study's instances share them)."""
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
    return re.compile(r"(?<!\w)(" + alternatives + r")(?!\w)", re.IGNORECASE)


_ID_TAGS = frozenset(Tag(k) for k in (
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "PatientBirthDate", "PatientAddress",
    "MedicalRecordLocator", "AdmissionID", "StudyID", "PatientTelephoneNumbers",
))


def _damage(elem: DataElement | RawDataElement, vr: str) -> str:
    """Why a value cannot be what its VR says ("" when it can): a length field that swallowed its
    neighbours shows as control bytes in a string, or as a count of binary numbers the dictionary
    does not allow. Such an element would carry the swallowed attributes out unread."""
    if elem.VR and elem.VR != "UN" and " or " not in elem.VR and not elem.tag.is_private:
        expected = _dictionary_vrs(int(elem.tag))
        if expected and elem.VR not in expected:
            return f"VR {elem.VR} where the dictionary says {' or '.join(sorted(expected))}"
    if vr in _STRING_VRS:
        if isinstance(elem, RawDataElement):
            bad = bool(elem.value) and _DAMAGED.search(elem.value.rstrip(b"\0 ")) is not None
        else:
            values = elem.value if elem.VM > 1 else [elem.value]
            bad = any(_DAMAGED_TEXT.search(str(v).rstrip("\0 ")) for v in values if v is not None)
        return f"control bytes in a {vr} value" if bad else ""
    size = _FIXED_SIZES.get(vr)
    if size and isinstance(elem, RawDataElement) and elem.value:
        count, rest = divmod(len(elem.value), size)
        allowed = _dictionary_vm(int(elem.tag))
        if rest or (allowed.isdigit() and count != int(allowed)):
            return f"{len(elem.value)} bytes of {vr} where the dictionary allows VM {allowed}"
    return ""


@functools.lru_cache(maxsize=4096)
def _dictionary_vrs(tag: int) -> frozenset[str]:
    """The VRs the dictionary allows for a public tag ("US or SS" -> both); empty when unknown."""
    try:
        return frozenset(dictionary_VR(tag).split(" or "))
    except KeyError:
        return frozenset()


@functools.lru_cache(maxsize=4096)
def _dictionary_vm(tag: int) -> str:
    try:
        return dictionary_VM(tag)
    except KeyError:
        return "1-n"


@functools.lru_cache(maxsize=4096)
def _in_dictionary(tag: int) -> bool:
    """A standard attribute (current or retired, repeating groups included) that pydicom knows."""
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"


def _vr(elem: DataElement | RawDataElement) -> str:
    """The VR without decoding the value: the file's (explicit VR) or the dictionary's."""
    vr = elem.VR
    if vr and vr != "UN":
        return vr
    return _dictionary_vr(elem.tag)


def deidentify_all(profile: DeidProfile, secret: bytes, instances: Iterable[bytes]) -> list[bytes]:
    """De-identify the instances of one share (one Deidentifier: consistent UIDs across them)."""
    deid = Deidentifier(profile, secret)
    return [deid.instance(data) for data in instances]
