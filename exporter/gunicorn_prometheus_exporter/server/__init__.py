"""The metrics server: HTTP and exposition (``http``), TLS and basic auth (``webconfig``),
and the process a gunicorn master forks to serve (``monitor``)."""
