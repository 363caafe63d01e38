"""A dependency-free WSGI demo application and its gunicorn config (``make demo``, the demo
image and the end-to-end tests use them)."""
