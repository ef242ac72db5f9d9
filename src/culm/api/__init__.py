"""culm's HTTP API (FastAPI): :func:`culm.api.app.create_app`."""
