"""The classroom's hold on VE limits: a student's VE in a course that has a plan follows the course's plan,
not its owner's. vzpanel.ves.limits asks through its plan governors (registered in apps.py)."""

from vzpanel.ves.models import VE

from .models import Membership

STUDENT = Membership.Role.STUDENT


def governed(ves):
    """Those of the VE queryset ves that are a student's VE in a course with a plan."""
    return ves.filter(memberships__role=STUDENT, memberships__course__plan__isnull=False)


def governed_by(plan):
    """The live student VEs of the courses on plan."""
    return VE.objects.live().filter(memberships__role=STUDENT, memberships__course__plan=plan)
