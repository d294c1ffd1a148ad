"""The audit trail: event codes (`codes`), the event model (`events`), the tamper-evident store
(`store`), and the three output formats (`dicom_xml`, `fhir`, `syslog`)."""
