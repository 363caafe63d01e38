"""Sync workers that also ship their metrics to Redis, so that one exporter (or any pod's
metrics server) serves every pod's metrics: ``gunicorn -c gunicorn_redis_integration.conf.py
app:app``. Redis at ``REDIS_URL`` (default redis://127.0.0.1:6379/0)."""
import os

os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")
os.environ.setdefault("REDIS_ENABLED", "true")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
timeout = 30
