"""Schedules: agent runs on a cron, interval or one-shot trigger, in an IANA time zone, with
misfire and overlap policies. The ticker runs in the server process; ``engine.schedules`` is
the Python API.

Modules, one idea each: ``models`` (the JSON shape), ``cron`` and ``triggers`` (fire times,
DST), ``policy`` (misfire and overlap, pure), ``describe`` (plain words), ``schema`` and
``store`` (tables, claims), ``dispatch`` (starting runs, recording their end), ``ticker`` (the
loop), ``runs`` (the engine as the scheduler sees it), ``service`` (the Python API).
"""
