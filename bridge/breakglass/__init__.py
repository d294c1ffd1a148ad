"""Break-glass: emergency access to one study or patient, audited, alerted and reviewed (docs/governance.md)."""
