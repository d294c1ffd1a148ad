"""De-identification on the way out, held to PS3.15 Table E.1-1 as transcribed in
tests/data/ps3_15_table_e1_1.csv (independently of the de-identifier's own table)."""

from __future__ import annotations

import os

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from bridge.policy.sharing import DeidOption, DeidProfile, PrivateTag
from bridge.sharing.deidentify import DeidentificationRefused, Deidentifier, deidentify_all
from tests.unit.sharing.annex_e import (
    PATIENT_ID,
    PATIENT_WORDS,
    TABLE_ROWS,
    ShareCheck,
    clinical_instance,
    every_table_attribute,
    read,
    to_bytes,
    uid,
)

KEEP = (PrivateTag(0x0029, "SAFE VENDOR", 0x08),)
ALL_OPTIONS = {o.value for o in DeidOption} - {"retain-longitudinal-full-dates"}


def profile(options: set[str] = frozenset(), keep: tuple[PrivateTag, ...] = KEEP) -> DeidProfile:  # type: ignore[assignment]
    return DeidProfile(frozenset(DeidOption(o) for o in options), keep)


def share(options: set[str], inputs: list[bytes], keep=KEEP, secret: bytes | None = None):  # type: ignore[no-untyped-def]
    outputs = deidentify_all(profile(options, keep), secret or os.urandom(32), inputs)
    check = ShareCheck(set(options), {(p.group, p.creator.upper(), p.element) for p in keep})
    for before, after in zip(inputs, outputs, strict=True):
        check.instance(read(before), read(after))
    return check, outputs


def test_the_table_file_is_the_whole_table() -> None:
    """Sanity of the oracle: PS3.15 2024e Table E.1-1 has 620 rows besides the private-attributes row."""
    assert len(TABLE_ROWS) == 620
    codes = {r.basic for r in TABLE_ROWS}
    assert codes == {"X", "Z", "D", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}


@pytest.mark.parametrize("options", [
    set(),
    {"retain-longitudinal-modified-dates"},
    {"retain-longitudinal-full-dates"},
    {"clean-descriptors"},
    {"retain-device-identity"},
    {"retain-patient-characteristics"},
    {"retain-institution-identity"},
    ALL_OPTIONS,
], ids=lambda o: "+".join(sorted(o)) or "basic")
def test_every_output_follows_table_e1_1(options: set[str]) -> None:
    inputs = [to_bytes(clinical_instance(number=n)) for n in (1, 2, 3)] + [to_bytes(every_table_attribute())]
    check, _ = share(options, inputs)
    assert check.problems == []
    assert {"X", "U", "D", "Z"} <= check.checked
    if "retain-longitudinal-modified-dates" in options:
        assert len(check.shift_days) == 1 and next(iter(check.shift_days)) < 0


def test_implicit_vr_files_follow_the_table_too() -> None:
    """Without explicit VRs the de-identifier takes each VR from the dictionary (a sequence is still found)."""
    inputs = [to_bytes(clinical_instance(number=n), ImplicitVRLittleEndian) for n in (1, 2)]
    inputs.append(to_bytes(every_table_attribute(), ImplicitVRLittleEndian))
    for options in (set(), ALL_OPTIONS):
        check, outputs = share(options, inputs)
        assert check.problems == []
        assert read(outputs[0]).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_an_in_memory_dataset_follows_the_table_too() -> None:
    """`dataset()` on a Dataset built in memory (decoded elements, no file meta) gives the same result."""
    for options in (set(), ALL_OPTIONS):
        deid = Deidentifier(profile(options), os.urandom(32))
        check = ShareCheck(set(options), {(p.group, p.creator.upper(), p.element) for p in KEEP})
        for build in (clinical_instance, every_table_attribute):
            original, ds = build(), build()
            out = deid.dataset(ds)
            assert out is ds and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            check.instance(original, ds)
        assert check.problems == []


def test_no_identifier_is_left_anywhere_in_the_bytes() -> None:
    clinical = [to_bytes(clinical_instance(number=n)) for n in (1, 2)]
    # every_table_attribute() puts the name in every field, also those an option keeps (K): only the Basic
    # Profile (and clean-descriptors, which only cleans) must remove it from all of them
    for options, inputs in ((set(), [*clinical, to_bytes(every_table_attribute())]),
                            ({"clean-descriptors"}, [*clinical, to_bytes(every_table_attribute())]),
                            (ALL_OPTIONS, clinical)):
        _, outputs = share(options, inputs)
        for data in outputs:
            for secret in (*PATIENT_WORDS, PATIENT_ID, "ACC-998877", "OTHER-1234", "19610412", "House", "ALDHELM_PACS"):
                assert secret.encode() not in data, (options, secret)
            if not options:
                assert uid("").encode() not in data  # no original UID (all under that root) anywhere
            for ours in (uid("1"), uid("2."), uid("3."), uid("4"), uid("8."), uid("9.")):
                # with retain-device-identity, Device UID stays (Table E.1-1); study, series, instance,
                # frame of reference and referenced UIDs never do
                assert ours.encode() not in data, (options, ours)


def test_uids_consistent_within_a_share_and_different_across_shares() -> None:
    inputs = [to_bytes(clinical_instance(number=n)) for n in (1, 2, 3)]
    secret_a, secret_b = os.urandom(32), os.urandom(32)
    _, out_a = share(set(), inputs, secret=secret_a)
    _, out_b = share(set(), inputs, secret=secret_b)
    _, again = share(set(), inputs, secret=secret_a)
    a, b = [read(x) for x in out_a], [read(x) for x in out_b]
    assert len({d.StudyInstanceUID for d in a}) == 1 and len({d.SeriesInstanceUID for d in a}) == 1
    assert a[0].StudyInstanceUID != b[0].StudyInstanceUID
    assert {d.SOPInstanceUID for d in a}.isdisjoint({d.SOPInstanceUID for d in b})
    # instance 1 refers to instance 2: the reference follows the remapped UID
    assert a[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == a[1].SOPInstanceUID
    assert a[0].ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert [read(x).SOPInstanceUID for x in again] == [d.SOPInstanceUID for d in a]  # same secret, same UIDs
    for d in a:
        assert d.SOPInstanceUID.startswith("2.25.") and len(d.SOPInstanceUID) <= 64


def test_dates_shift_per_share_when_the_option_says_so() -> None:
    inputs = [to_bytes(clinical_instance())]
    opt = {"retain-longitudinal-modified-dates"}
    a = read(share(opt, inputs)[1][0])
    b = read(share(opt, inputs)[1][0])
    assert a.StudyDate != "20240315" and a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert a.StudyDate != b.StudyDate  # another share, another shift (2^32 draws over 3286 days)
    assert a.StudyTime == "101500"  # whole days: the time of day is kept
    basic = read(share(set(), inputs)[1][0])
    assert basic.StudyDate in ("", None) and basic.LongitudinalTemporalInformationModified == "REMOVED"


def test_private_attributes_removed_unless_on_the_keep_list() -> None:
    inputs = [to_bytes(clinical_instance())]
    kept = read(share(set(), inputs)[1][0])
    assert kept.private_block(0x0029, "SAFE VENDOR")[0x08].value == "kernel B30f"
    assert not any(e.tag.group == 0x0009 for e in kept)
    none_kept = read(share(set(), inputs, keep=())[1][0])
    assert not any(e.tag.is_private for e in none_kept)
    # a keep-list entry names the creator: the same element number under another creator goes
    other = read(share(set(), inputs, keep=(PrivateTag(0x0029, "OTHER VENDOR", 0x08),))[1][0])
    assert not any(e.tag.is_private for e in other)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("bia", ["YES", "yes", " YES "])
def test_burned_in_annotation_yes_is_refused_naming_the_instance(bia: str) -> None:
    ds = clinical_instance(modality="CT", bia=bia)
    deid = Deidentifier(profile(), os.urandom(32))
    with pytest.raises(DeidentificationRefused) as ei:
        deid.instance(to_bytes(ds))
    assert ds.SOPInstanceUID in str(ei.value) and "Burned In Annotation is YES" in str(ei.value)
    assert ei.value.subject == ds.SOPInstanceUID


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
@pytest.mark.parametrize("modality", ["US", "SC", "OT", "ES", "XC", "us"])
def test_absent_burned_in_annotation_refused_for_the_policy_modalities(modality: str) -> None:
    deid = Deidentifier(profile(), os.urandom(32))
    with pytest.raises(DeidentificationRefused, match="absent and modality"):
        deid.instance(to_bytes(clinical_instance(modality=modality)))


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX", "NM", "PT"])
def test_absent_burned_in_annotation_allowed_for_the_other_modalities(modality: str) -> None:
    out = read(Deidentifier(profile(), os.urandom(32)).instance(to_bytes(clinical_instance(modality=modality))))
    assert out.PatientIdentityRemoved == "YES"


def test_burned_in_no_lets_an_ultrasound_through_and_the_policy_list_is_honoured() -> None:
    Deidentifier(profile(), os.urandom(32)).instance(to_bytes(clinical_instance(modality="US", bia="NO")))
    strict = DeidProfile(refuse_modalities_without_bia=frozenset({"CT"}))
    with pytest.raises(DeidentificationRefused):
        Deidentifier(strict, os.urandom(32)).instance(to_bytes(clinical_instance(modality="CT")))
    Deidentifier(strict, os.urandom(32)).instance(to_bytes(clinical_instance(modality="US")))


def test_an_unknown_burned_in_value_or_no_modality_fails_closed() -> None:
    deid = Deidentifier(profile(), os.urandom(32))
    with pytest.raises(DeidentificationRefused, match="neither YES nor NO"):
        deid.instance(to_bytes(clinical_instance(bia="MAYBE")))
    ds = clinical_instance()
    del ds.Modality
    with pytest.raises(DeidentificationRefused, match=r"\(none\)"):
        deid.instance(to_bytes(ds))


def test_refusal_changes_nothing_and_garbage_is_refused() -> None:
    ds = clinical_instance(modality="US")
    with pytest.raises(DeidentificationRefused):
        Deidentifier(profile(), os.urandom(32)).dataset(ds)
    assert ds.PatientName == "Doe^Johnathan^Q"
    with pytest.raises(DeidentificationRefused, match="not a DICOM instance"):
        Deidentifier(profile(), os.urandom(32)).instance(b"not dicom at all" * 20)


def test_the_share_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="16"):
        Deidentifier(profile(), b"short")


def test_clean_descriptors_keeps_the_text_without_names() -> None:
    out = read(share({"clean-descriptors"}, [to_bytes(clinical_instance())])[1][0])
    assert out.StudyDescription.startswith("CT chest for")
    assert "Doe" not in out.StudyDescription and "MRN" not in out.StudyDescription
    assert "House" not in out.ImageComments
    assert out.RequestAttributesSequence[0].RequestedProcedureDescription == "CT chest *** ***"
    basic = read(share(set(), [to_bytes(clinical_instance())])[1][0])
    assert "StudyDescription" not in basic and "RequestAttributesSequence" not in basic


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every damaged value it reads
def test_damaged_files_are_refused_never_crash_and_never_leak() -> None:
    """Truncated and bit-flipped files: either a de-identified file or DeidentificationRefused (fail
    closed), never another exception the share endpoint would turn into a 500 or a partial answer.
    Under the Basic Profile nothing of the patient gets out even from a damaged file (a public tag no
    dictionary knows is removed; a value holding control bytes, a length that swallowed its
    neighbours, is refused). With the options that keep or clean free text, cleaning relies on
    recognising the identifiers, which a damaged Patient's Name defeats: only fail-closed is required."""
    import random

    data = to_bytes(clinical_instance(rows=4))
    rnd = random.Random(14)
    damaged = [data[:cut] for cut in range(0, len(data), 7)]
    for _ in range(400):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(132, len(b))] = rnd.randrange(256)
        damaged.append(bytes(b))
    for options in (set(), ALL_OPTIONS):
        deid = Deidentifier(profile(options), os.urandom(32))
        outcomes = {"refused": 0, "de-identified": 0}
        for sample in damaged:
            try:
                out = deid.instance(sample)
            except DeidentificationRefused:
                outcomes["refused"] += 1
                continue
            outcomes["de-identified"] += 1
            if not options:
                for secret in (*PATIENT_WORDS, PATIENT_ID, "ACC-998877", "19610412", uid("3.")):
                    assert secret.encode() not in out, (secret, damaged.index(sample))
        assert outcomes["refused"] and outcomes["de-identified"], outcomes


def _patch(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


def test_a_public_tag_no_dictionary_knows_is_removed() -> None:
    ds = clinical_instance()
    ds.add_new(0x00FA0010, "LO", "Johnathan Doe")  # even group, in no edition of the standard
    out = read(Deidentifier(profile(ALL_OPTIONS), os.urandom(32)).instance(to_bytes(ds)))
    assert 0x00FA0010 not in out


@pytest.mark.parametrize(("what", "old", "new", "why"), [
    # Rows (0028,0010) US, VM 1, its length made 6: it would carry the next elements out unread
    ("a length that swallows its neighbours", b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00US\x06\x00",
     "VM 1"),
    # Accession Number (0008,0050) SH turned into Specific Character Set (0008,0005), a CS
    ("a tag turned into another one", b"\x08\x00\x50\x00SH", b"\x08\x00\x05\x00SH", "VR SH where"),
    # Study ID (0020,0010) SH with a NUL and a control byte inside its value
    ("control bytes in a string", b"S-42", b"S\x00\x0242", "control bytes"),
])
def test_a_damaged_element_is_refused_naming_the_instance(what: str, old: bytes, new: bytes, why: str) -> None:
    data = _patch(to_bytes(clinical_instance(modality="MR")), old, new)
    with pytest.raises(DeidentificationRefused, match=why) as ei:
        Deidentifier(profile(ALL_OPTIONS), os.urandom(32)).instance(data)
    assert uid("3.1.1") in str(ei.value), what


def test_a_damaged_sop_instance_uid_is_refused_not_crashed() -> None:
    data = _patch(to_bytes(clinical_instance()), b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00U\x8a")
    with pytest.raises(DeidentificationRefused):
        Deidentifier(profile(), os.urandom(32)).instance(data)
