"""Worker classes, one module per gunicorn worker type over a shared mixin (``mixin``), as
gunicorn's own ``gunicorn/workers`` is laid out."""
