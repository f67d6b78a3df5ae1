"""Sources: the producers of change records (`agent.change.Change`), one sub-package per database."""
