"""Study sharing: the share decision (policy.py) and de-identification on the way out (deidentify.py)."""
