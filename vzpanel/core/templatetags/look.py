"""Template helpers for the panel's look: a message's task, a task's result in words."""

from django import template

from vzpanel.lib.words import describe

register = template.Library()


@register.filter
def task_ref(extra_tags) -> str:
    """Return the task id a message is about (extra_tags "task:N"), or "" when it is about none.

    The live pages settle such a message (remove or update it) when they see that task end.
    """
    for tag in str(extra_tags or "").split():
        kind, _, value = tag.partition(":")
        if kind == "task" and value.isdigit():
            return value
    return ""


@register.filter
def result_items(result):
    """Return a task's result as (label, words) pairs for a definition list (see vzpanel.lib.words)."""
    return describe(result)
