"""Threaded workers (gthread), ``threads`` requests at once each:
``gunicorn -c gunicorn_thread_worker.conf.py app:app``."""
import os

os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gunicorn_prometheus_exporter.PrometheusThreadWorker"
threads = 4
timeout = 30
