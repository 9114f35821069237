"""The CTID columns are named ve_ctid: "ctid" is a system column of every PostgreSQL table, so a table with
its own column of that name cannot be made there. The earlier migrations now make ve_ctid; a database they
made before (SQLite) has the column renamed here."""

from django.db import migrations


def rename_old_columns(apps, schema_editor):
    conn = schema_editor.connection
    with conn.cursor() as cur:
        for table in ("ves_ve", "ves_backup"):
            columns = [c.name for c in conn.introspection.get_table_description(cur, table)]
            if "ctid" in columns and "ve_ctid" not in columns:
                cur.execute(f'ALTER TABLE "{table}" RENAME COLUMN "ctid" TO "ve_ctid"')


class Migration(migrations.Migration):
    dependencies = [("ves", "0004_locked_and_rescue")]
    operations = [migrations.RunPython(rename_old_columns, migrations.RunPython.noop, elidable=True)]
