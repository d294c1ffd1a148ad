"""PACS side: Orthanc configuration and the request filter the bridge installs into Orthanc."""
