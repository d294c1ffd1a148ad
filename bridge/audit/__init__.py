"""The audit trail: the tamper-evident store (`store`) and the three output formats (`dicom_xml`,
`fhir`, `syslog`).  The event codes and the event model live in :mod:`bridge.core.audit_codes` and
:mod:`bridge.core.audit_events` (the Orthanc plugin builds events too)."""
