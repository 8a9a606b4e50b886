"""precipfast.jobs: the work behind each command (sample, demo, info, validate), called by the CLI and the Python API."""
