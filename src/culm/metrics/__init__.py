"""Usage metrics: the seed's metrics events, a non-blocking batched pipeline, a store and queries.

events.py      the events (chat | forward | system) and their JSON
derive.py      chat events from stored run events (the mapping is documented there)
bus.py         the bounded queue; ``emit`` never blocks, drops are counted
worker.py      batches into the store; retries, records storage errors, never dies
batch.py       events as table changes, a batch of them folded into rows (pure)
tables.py      the tables (in the engine's database, created by its migrations)
statements.py  the store's writes as SQL, built once per dialect
store.py       writes batches; retention
queries.py     summary, models, sessions, daily, tools, forward requests
periods.py     day / week / month periods (pure)
reports.py     what the queries return
pipeline.py    the whole, as the engine wires it (``engine.metrics``)
prometheus.py  ``GET /metrics`` (needs ``culm[server]``)
"""
