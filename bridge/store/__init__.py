"""The bridge's own database: models (`models`), engine and migrations (`db`), leases (`lease`)."""
