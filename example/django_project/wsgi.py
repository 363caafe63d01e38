"""Run: ``gunicorn -c gunicorn_thread_worker.conf.py django_project.wsgi:application`` from
``example/``."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")
application = get_wsgi_application()
