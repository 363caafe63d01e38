"""Redis storage: many gunicorn instances, one aggregated view.

Workers keep recording into the local multiprocess directory exactly as in file mode; the
request path never talks to Redis. Per gunicorn instance, a ``Flusher`` in the metrics
server process ships the directory's state (absolute values, only what changed) to Redis in
one script call per flush; a reader (``RedisSource``, the standalone ``serve`` command)
reads a whole key prefix in one script call and merges it with the same ``Merger`` as the
directory collector, so both expose exactly the same families.

Modules: ``keys`` (key layout and identities), ``connection`` (client from the settings),
``scripts`` (the Lua scripts: flush, fold, read), ``flusher`` and ``source``.
See docs/redis.md."""
