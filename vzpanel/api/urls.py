from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from vzpanel.classroom.api import CourseViewSet

from . import views

router = DefaultRouter()
router.register("ves", views.VEViewSet, basename="ve")
router.register("backups", views.BackupViewSet, basename="backup")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("templates", views.TemplateViewSet, basename="template")
router.register("audit", views.AuditViewSet, basename="audit")
router.register("classes", CourseViewSet, basename="class")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include(router.urls)),
]
