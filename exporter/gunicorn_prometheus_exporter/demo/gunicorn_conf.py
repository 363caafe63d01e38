"""Gunicorn config of the demo: ``gunicorn -c python:gunicorn_prometheus_exporter.demo.gunicorn_conf
gunicorn_prometheus_exporter.demo.app:app``. The worker class is the whole set-up."""
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS",
                              "gunicorn_prometheus_exporter.PrometheusWorker")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
