"""Named agents: presets of a session's settings, defined in code (an app), in config.toml
(``[agents.NAME]``) or through the API (stored in the database): :mod:`culm.agents.models`,
the lookup over the three (:mod:`culm.agents.registry`) and the table (:mod:`culm.agents.store`).
"""
