"""/api/v1/billing/ (included by vzpanel/api/urls.py)."""

from django.urls import path

from .api import ServiceView, call_view
from .services import CALLS

EXTERNAL_ID = "<str:external_id>"

urlpatterns = [
    path(f"services/{EXTERNAL_ID}/", ServiceView.as_view(), name="billing-service"),
    *[path(f"services/{EXTERNAL_ID}/{call}/", call_view(call), name=f"billing-{call}") for call in CALLS],
]
