"""gevent workers, up to ``worker_connections`` requests at once each (``pip install
gunicorn-prometheus-exporter[gevent]``): ``gunicorn -c gunicorn_gevent_async.conf.py app:app``."""
import os

os.environ.setdefault("PROMETHEUS_METRICS_PORT", "9091")
os.environ.setdefault("PROMETHEUS_BIND_ADDRESS", "127.0.0.1")

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gunicorn_prometheus_exporter.PrometheusGeventWorker"
worker_connections = 1000
timeout = 30
