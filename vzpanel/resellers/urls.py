from django.urls import path

from . import views

app_name = "resellers"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("customers/", views.customer_list, name="customers"),
    path("customers/new/", views.customer_create, name="customer-create"),
    path("customers/<int:pk>/", views.customer_edit, name="customer-edit"),
    path("customers/<int:pk>/disable/", views.customer_disable, name="customer-disable"),
    path("plans/", views.plan_list, name="plans"),
    path("plans/new/", views.plan_edit, name="plan-create"),
    path("plans/<int:pk>/", views.plan_edit, name="plan-edit"),
    path("audit/", views.audit_list, name="audit"),
    path("manage/", views.reseller_list, name="admin-list"),
    path("manage/new/", views.reseller_create, name="admin-create"),
    path("manage/<int:pk>/", views.reseller_quota, name="admin-quota"),
]
