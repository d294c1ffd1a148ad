"""Access reviews (recertification): who holds which PACS role and why, what they did with it,
what looks wrong (flags), and a campaign in which department heads keep or revoke each
assignment (docs/governance.md, "The access review cycle")."""
