"""MCP tool servers: their tools offered to the model as ``mcp__<server>__<tool>``.

- :mod:`culm.mcp.config`: what a server is (``command``/``args``/``env`` for stdio,
  ``url``/``headers`` for Streamable HTTP, plus ``timeout``), validated with errors that name
  the server and the field;
- :mod:`culm.mcp.names`: how server and tool names become culm tool names;
- :mod:`culm.mcp.transport`: opening one connection with the ``mcp`` SDK;
- :mod:`culm.mcp.connection`: one server's lifecycle (start on first use, shared by every run,
  restart after a crash with backoff, clean stop);
- :mod:`culm.mcp.tool`: a server's tool as a :class:`~culm.tools.base.Tool`;
- :mod:`culm.mcp.manager`: every server of the engine and of its sessions; the tool source
  through which sessions enable MCP tools.

Only ``config`` and ``names`` are imported by the rest of culm at start-up; the SDK is loaded
when the engine starts.
"""
