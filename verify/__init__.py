"""precipfast.verify: every score precipfast reports, and the verification of an ensemble against a truth file."""
