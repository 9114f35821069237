from django.urls import path

from . import views

app_name = "classroom"
urlpatterns = [
    path("", views.course_list, name="list"),
    path("new/", views.course_create, name="create"),
    path("login/<str:key>/", views.link_login, name="link-login"),
    path("welcome/", views.welcome, name="welcome"),
    path("<int:pk>/", views.course_detail, name="detail"),
    path("<int:pk>/status/", views.course_status, name="status"),
    path("<int:pk>/edit/", views.course_edit, name="edit"),
    path("<int:pk>/roster/", views.roster, name="roster"),
    path("<int:pk>/provision/", views.provision, name="provision"),
    path("<int:pk>/students/add/", views.student_add, name="student-add"),
    path("<int:pk>/students/<int:member>/remove/", views.student_remove, name="student-remove"),
    path("<int:pk>/students/<int:member>/reset/", views.student_reset, name="student-reset"),
    path("<int:pk>/action/", views.class_action, name="action"),
    path("<int:pk>/retry/<int:member>/", views.retry, name="retry"),
    path("<int:pk>/cancel/<int:task_id>/", views.cancel, name="cancel"),
    path("<int:pk>/image/", views.image, name="image"),
    path("<int:pk>/sheet/", views.sheet, name="sheet"),
    path("<int:pk>/sessions/", views.session_add, name="session-add"),
    path("<int:pk>/sessions/<int:session_id>/delete/", views.session_delete, name="session-delete"),
    path("<int:pk>/assistants/", views.assistant_add, name="assistant-add"),
    path("<int:pk>/assistants/<int:member>/remove/", views.assistant_remove, name="assistant-remove"),
    path("<int:pk>/end/", views.end, name="end"),
    path("<int:pk>/extend/", views.extend, name="extend"),
    path("<int:pk>/reset/<int:member>/", views.reset_own, name="reset-own"),
]
