"""A small culm project: a help desk's tools, agents and schedule (see ../README.md)."""
