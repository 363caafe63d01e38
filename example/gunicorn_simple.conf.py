"""Sync workers, one request at a time each: ``gunicorn -c gunicorn_simple.conf.py app:app``.
The worker class is the whole set-up; metrics at http://127.0.0.1:9091/metrics."""
import os

os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gunicorn_prometheus_exporter.PrometheusWorker"
timeout = 30
