"""eventlet workers, up to ``worker_connections`` requests at once each. gunicorn 26 removed
the eventlet worker: ``pip install gunicorn-prometheus-exporter[eventlet]`` installs a
gunicorn that has it (<= 25.3). ``gunicorn -c gunicorn_eventlet_async.conf.py app:app``."""
import os

os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gunicorn_prometheus_exporter.PrometheusEventletWorker"
worker_connections = 1000
timeout = 30
