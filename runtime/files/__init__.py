"""precipfast.runtime.files: reading inputs, writing outputs crash-safely, and the signals that stop a run."""
