from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("users/<int:user_id>", views.user),
    path("boom", views.boom),
    path("raw", views.raw),
    path("upload", views.upload),
    path("stream", views.stream),
    path("file", views.file),
]
