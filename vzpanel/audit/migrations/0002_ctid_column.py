"""The CTID column is named ve_ctid (see ves.0005_ctid_column: "ctid" is a PostgreSQL system column)."""

from django.db import migrations


def rename_old_column(apps, schema_editor):
    conn = schema_editor.connection
    with conn.cursor() as cur:
        columns = [c.name for c in conn.introspection.get_table_description(cur, "audit_auditentry")]
        if "ctid" in columns and "ve_ctid" not in columns:
            cur.execute('ALTER TABLE "audit_auditentry" RENAME COLUMN "ctid" TO "ve_ctid"')


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(rename_old_column, migrations.RunPython.noop, elidable=True)]
