"""A course's golden image: an OS template, or one of the teacher's VEs frozen into a template."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from vzpanel.audit import log as audit
from vzpanel.tasks.models import Task
from vzpanel.ves.errors import ActionRefused, InvalidRequest
from vzpanel.ves.models import VE
from vzpanel.ves.services import clean_template

from .actions import ASLEEP, SAVE_IMAGE
from .bulk import enqueue_bulk
from .models import Course


def set_template_image(user, course: Course, ostemplate: str, *, request=None) -> Course:
    """Make an OS template the course's golden image: new VEs get it, existing ones on reset."""
    clean_template(course.node, ostemplate, user)
    course.ostemplate, course.image_kind, course.image_ve = ostemplate, Course.ImageKind.TEMPLATE, None
    course.image_version += 1
    course.image_updated_at = timezone.now()
    course.save(update_fields=["ostemplate", "image_kind", "image_ve", "image_version", "image_updated_at"])
    audit.record("class.image", user=user, request=request, detail=f"course {course.pk}: template {ostemplate}")
    return course


def freeze_image(user, course: Course, ve: VE, *, reset_after: bool = False, keep_work: bool = True,
                 request=None) -> Task:
    """Save one of the teacher's VEs as the course's next golden image (a template on the node)."""
    if not (user.is_panel_admin or ve.owner_id in (user.pk, course.teacher_id)):
        raise InvalidRequest("The golden image must be one of your own VEs.")
    if course.memberships.filter(ve=ve).exists():
        raise InvalidRequest("A student's VE cannot be the golden image; prepare one of your own VEs.")
    if ve.status not in (VE.Status.RUNNING, *ASLEEP):
        raise ActionRefused(f"VE {ve.ctid} is {ve.status}; it cannot be frozen now.")
    if course.node_id is None:
        from .services import SPREAD_NEEDS_TEMPLATE

        raise InvalidRequest(SPREAD_NEEDS_TEMPLATE)
    if ve.node_id != course.node_id:  # the image becomes a template of the VE's node, where the class must be
        raise InvalidRequest(f"VE {ve.ctid} is on node {ve.node.name}; the course's VEs are on node "
                             f"{course.node.name}. Prepare the golden image on that node.")
    name = course.template_name(course.image_version + 1)
    params = {"course": course.pk, "name": name, "reset_after": bool(reset_after), "keep_work": bool(keep_work)}
    try:
        with transaction.atomic():
            task = Task.objects.create(ve=ve, node=course.node, action=SAVE_IMAGE, params=params, user=user,
                                       ip=audit.client_ip(request))
            audit.record("class.image", user=user, request=request, ve=ve, task=task, result="queued",
                         detail=f"course {course.pk}: freeze VE {ve.ctid} as {name}")
            transaction.on_commit(lambda: enqueue_bulk(course.node.name, None, [task.pk]))
    except IntegrityError:
        raise ActionRefused(f"VE {ve.ctid} is busy with another task; wait for it to finish.") from None
    return task


def image_task(course: Course) -> Task | None:
    return Task.objects.filter(action=SAVE_IMAGE, params__course=course.pk).order_by("-created_at").first()
