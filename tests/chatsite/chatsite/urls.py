from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health/", views.health, name="health"),
    path("broadcast/", views.broadcast, name="broadcast"),
]
