"""Read a class roster (CSV: name, e-mail or user name, optional group) and check it line by line.

`parse` needs no database: it turns the uploaded bytes into rows, or into errors that each name the
line they are on. `resolve` checks the rows against existing accounts (linked, not duplicated): only the
teacher's own students may be linked (`refusal` says why any other account may not).
Nothing is written until every line is good; `services.import_roster` then writes all of it in one
transaction.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

MAX_BYTES = 1 << 20
MAX_ROWS = 2000
HEADER_WORDS = {
    "name": "name", "full name": "name", "fullname": "name", "student": "name",
    "email": "email", "e-mail": "email", "mail": "email", "email address": "email", "e-mail address": "email",
    "username": "username", "user name": "username", "user": "username", "login": "username",
    "group": "group", "section": "group", "team": "group",
}
GROUP_RE = re.compile(r"^[\w .:/+-]{1,64}$")


@dataclass
class Row:
    line: int
    name: str
    email: str = ""
    username: str = ""
    group: str = ""
    user: object = None  # the existing account it links to, once resolved
    enrolled: object = None  # its existing membership of this course, if any

    @property
    def login(self) -> str:
        """The user name of the account this row is (or becomes)."""
        return self.username or self.email.lower()


@dataclass
class Roster:
    rows: list[Row] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def errors(self) -> list[str]:
        """Every problem, in line order, each starting with its line number."""
        return [f"Line {line}: {message}" if line else message for line, message in sorted(self.problems,
                                                                                          key=lambda p: p[0])]

    def error(self, line: int | None, message: str) -> None:
        self.problems.append((line or 0, message))


def parse(data: bytes) -> Roster:
    """Return the rows of a roster file, or its errors (each with its line number)."""
    roster = Roster()
    if len(data) > MAX_BYTES:
        roster.error(None, f"The file is {len(data) // 1024} KiB; a roster may be at most {MAX_BYTES // 1024} KiB.")
        return roster
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        roster.error(line, "this is not a CSV file (it holds binary data). Save the roster as CSV (UTF-8) and "
                           "upload that.")
        return roster
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        roster.error(line, "this is not UTF-8 text. Save the roster as CSV (UTF-8) and upload that.")
        return roster
    if not text.strip():
        roster.error(None, "The file is empty: there is no student in it.")
        return roster
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    columns = None
    seen: dict[str, int] = {}
    try:
        for cells in reader:
            line = reader.line_num
            cells = [c.strip() for c in cells]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if columns is None:
                columns = _header(cells)
                if columns is not None:
                    continue
                columns = ["name", "id", "group"]
            if len(roster.rows) + len(roster.problems) >= MAX_ROWS:
                roster.error(line, f"a roster may have at most {MAX_ROWS} students; split it.")
                break
            row = _row(roster, line, cells, columns)
            if row is None:
                continue
            first = seen.get(row.login.lower())
            if first is not None:
                roster.error(line, f"{row.email or row.username} is on line {first} already.")
                continue
            seen[row.login.lower()] = line
            roster.rows.append(row)
    except csv.Error as exc:
        roster.error(reader.line_num or 1, f"this is not valid CSV ({exc}).")
        return roster
    if not roster.rows and not roster.problems:
        roster.error(None, "The file is empty: there is no student in it (only a header or comments).")
    return roster


def _delimiter(text: str) -> str:
    """Comma, semicolon (spreadsheets in many locales) or tab: the one most lines have."""
    lines = [ln for ln in text.splitlines()[:50] if ln.strip() and not ln.lstrip().startswith("#")][:20]
    counts = {d: sum(1 for ln in lines if d in ln) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def _header(cells: list[str]) -> list[str] | None:
    """Return the column names if cells are a header row, else None."""
    words = [HEADER_WORDS.get(c.lower()) for c in cells]
    if all(words) and ("email" in words or "username" in words):
        return words
    return None


def _row(roster: Roster, line: int, cells: list[str], columns: list[str]) -> Row | None:
    while len(cells) > len(columns) and not cells[-1]:
        cells = cells[:-1]  # trailing empty cells (spreadsheets add them)
    if len(cells) > len(columns):
        roster.error(line, f"{len(cells)} fields, but a line is: name, e-mail or user name, group (optional).")
        return None
    values = dict(zip(columns, cells, strict=False))
    ident = values.pop("id", "")
    if ident:
        values["email" if "@" in ident else "username"] = ident
    if values.get("email") and "@" not in values["email"] and not values.get("username"):
        values["username"] = values.pop("email")  # the column holds "e-mail or user name"
    name, email, username = values.get("name", ""), values.get("email", ""), values.get("username", "")
    group = values.get("group", "")
    problems = []
    if not email and not username:
        problems.append("an e-mail address or a user name is missing.")
    if email:
        try:
            validate_email(email)
        except ValidationError:
            problems.append(f"{email!r} is not a valid e-mail address.")
    if username:
        try:
            UnicodeUsernameValidator()(username)
            if len(username) > 150:
                raise ValidationError("too long")
        except ValidationError:
            problems.append(f"{username!r} is not a valid user name (letters, digits and @ . + - _, at most 150).")
    if not name:
        name = username or email.split("@")[0]
    if len(name) > 150:
        problems.append("the name is longer than 150 characters.")
    if group and not GROUP_RE.match(group):
        problems.append(f"the group {group[:70]!r} is not valid (letters, digits, spaces and . : / + - _, "
                        "at most 64).")
    for problem in problems:
        roster.error(line, problem)
    if problems:
        return None
    return Row(line=line, name=name, email=email, username=username, group=group)


def resolve(roster: Roster, course) -> None:
    """Link the rows to existing accounts, adding an error for any account that cannot join course."""
    from django.contrib.auth import get_user_model

    from .models import Membership

    User = get_user_model()
    logins = {r.login.lower() for r in roster.rows}
    emails = {r.email.lower() for r in roster.rows if r.email}
    by_login: dict[str, object] = {}
    by_email: dict[str, list] = {}
    candidates = User.objects.select_related("teacher")
    for user in _in_chunks(candidates, "username", logins) + _in_chunks(candidates, "email", emails):
        by_login[user.get_username().lower()] = user
        if user.email:
            by_email.setdefault(user.email.lower(), [])
            if user not in by_email[user.email.lower()]:
                by_email[user.email.lower()].append(user)
    enrolled = {m.user_id: m for m in Membership.objects.filter(course=course)}
    for row in roster.rows:
        user = by_login.get(row.login.lower())
        if user is None and row.email:
            same = by_email.get(row.email.lower(), [])
            if len(same) > 1:
                roster.error(row.line, f"{len(same)} accounts use the e-mail address {row.email}; give the user "
                                       "name instead.")
                continue
            user = same[0] if same else None
        if user is None:
            continue
        problem = refusal(user, course, enrolled.get(user.pk), named=row.username or row.email)
        if problem:
            roster.error(row.line, problem)
        else:
            row.user = user
            row.enrolled = enrolled.get(user.pk)


def refusal(user, course, membership, named: str = "") -> str:
    """Why the existing account user cannot be enrolled in course by its teacher, or "" when it can.

    A roster enrols only accounts that are already the teacher's students (made by their rosters, or in
    one of their courses) and new ones it makes. Any other account, whether the line named its user name
    or its e-mail address, stays out of the teacher's reach: enrolling it would hand the teacher its VEs
    and its sign-in (links, initial passwords). The messages use what the line named (`named`), so a
    line with someone's e-mail address does not learn their user name.
    """
    from .access import is_teachers_student, other_teacher_of
    from .models import Membership

    who = named or user.get_username()
    if not user.is_active:
        return f"the account {who} is disabled."
    if user.is_panel_admin:
        return f"{who} is an admin account; it cannot be enrolled as a student."
    if user.role == user.Role.TEACHER:
        return f"{who} is a teacher account; add teachers as assistants on the course page."
    if user.role != user.Role.STUDENT:
        return (f"{who} is an existing account that is not a student of yours; a roster cannot enrol it. Give the "
                "student a new e-mail address or user name.")
    other = other_teacher_of(course.teacher, user)
    if other is not None:
        return (f"{who} is a student of another teacher ({other.get_username()}); an account belongs to one "
                "teacher's classes at a time.")
    if not is_teachers_student(course.teacher, user):
        return (f"{who} is not one of your students (no course of yours has them); ask an admin to make you their "
                "teacher, or give a new e-mail address or user name.")
    if membership is not None and membership.role != Membership.Role.STUDENT:
        return f"{who} is an assistant of this course already."
    return ""


def _in_chunks(queryset, field_name: str, values: set[str], size: int = 500) -> list:
    """Users whose field (case-insensitive) is one of values, a few hundred per query."""
    from django.db.models.functions import Lower

    out = []
    values = sorted(values)
    annotated = queryset.annotate(_match=Lower(field_name))
    for i in range(0, len(values), size):
        out += list(annotated.filter(_match__in=values[i:i + size]))
    return out
