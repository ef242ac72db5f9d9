"""People in the loop: tool approvals and questions that wait durably.

A session's ``require_approval`` (tool names or fnmatch patterns; a tool whose class sets
``require_approval`` always) and the opt-in ``ask_user`` tool make a run ask a person. The run
then *parks*: its round's messages, its :class:`~culm.input.records.InputRequest` rows and its
``input_requested`` events are stored in one transaction, its status becomes ``waiting`` and it
is released (no owner, no lease, no task: a waiting run costs rows, not memory). An answer
(:meth:`culm.Engine.respond`, ``POST /v1/runs/{run_id}/input``) is stored with its
``input_received`` event; once no request of the run is open, the run is ready again and any
worker claims it and resumes it: the same run, its seq going on, the waiting tool calls run
(approved), refused (denied: the reason goes back to the model as the tool's error) or answered.

Modules: :mod:`.policy` (which calls need a person), :mod:`culm.domain.input` (requests, answers),
:mod:`.ask` (the ``ask_user`` tool), :mod:`.service` (the engine's side: list, answer, resume).
The store's side is :mod:`culm.storage.inputs`; expiry (``input_timeout``) is checked in the
database by every sweeper tick, so no process holds a timer for a waiting run.
"""
