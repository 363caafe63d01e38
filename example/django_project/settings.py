"""Django example settings: the least Django needs, plus the one line for the metrics."""
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_project.urls"
MIDDLEWARE = [
    "gunicorn_prometheus_exporter.frameworks.django.PrometheusMiddleware",  # the one line
]
INSTALLED_APPS = []
DATABASES = {}
USE_TZ = True
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "loggers": {"django": {"handlers": ["console"], "level": "ERROR"}}}
