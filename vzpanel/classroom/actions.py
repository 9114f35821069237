"""The classroom's task actions: a child per student VE, a parent per whole-class operation, their labels."""

from vzpanel.ves.models import VE

# Child actions (one student's VE each): names of their own in the one registry of task actions
# (vzpanel.tasks.actions, registered in apps.py), so an action name means one thing whoever queued it.
PROVISION = "student.provision"
RESET = "student.reset"
START = "student.start"
STOP = "student.stop"
SUSPEND = "student.suspend"
RESUME = "student.resume"
ARCHIVE = "student.archive"
SAVE_IMAGE = "class.image"
REMOVE_STUDENT = "class.remove"  # parent of the one `archive` child that removes a single student
CLOSE = "class.close"  # the end date passed: the tick stops the class
# Parent actions (the whole operation).
PARENT = {
    PROVISION: "class.provision",
    RESET: "class.reset",
    START: "class.start",
    STOP: "class.stop",
    SUSPEND: "class.suspend",
    ARCHIVE: "class.end",
}
LABELS = {
    PROVISION: "provision", RESET: "reset", START: "start", STOP: "stop", SUSPEND: "suspend",
    RESUME: "resume", ARCHIVE: "archive and remove", "class.image": "freeze golden image",
    "class.provision": "provision the class", "class.reset": "reset", "class.start": "start",
    "class.stop": "stop", "class.suspend": "suspend", "class.end": "end the course",
    "class.idle": "idle policy", "class.session": "lab schedule", "class.remove": "remove a student",
    "class.close": "stop at the end date",
}
CLASS_ACTIONS = ("start", "stop", "suspend", "reset")
SUSPENDED = VE.Status.SUSPENDED  # checkpointed by the engine (CRIU)
ASLEEP = (VE.Status.STOPPED, SUSPENDED)


def label(action: str) -> str:
    return LABELS.get(action, action)
