# Course.node empty: the course is spread over the nodes (its students' VEs placed one by one).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('classroom', '0003_end_links_to_non_students'),
        ('nodes', '0004_node_name_rule'),
    ]

    operations = [
        migrations.AlterField(
            model_name='course',
            name='node',
            field=models.ForeignKey(blank=True, help_text="where its students' VEs go; empty: spread over the nodes", null=True, on_delete=django.db.models.deletion.PROTECT, related_name='courses', to='nodes.node'),
        ),
    ]
