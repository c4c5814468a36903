"""Stored metrics days hold their member sets as roaring bitmaps (app/domain/metrics_days.py)
instead of dense ones (bit i = member i). Every stored day is marked out of date, so the
metrics_days job (or the next call) rebuilds it in the new form; going back marks them again,
so the previous release rebuilds them dense. A dense day read meanwhile is converted on read."""
from tortoise import migrations
from tortoise.migrations import operations as ops


async def rebuild(apps, schema_editor) -> None:
    await schema_editor.client.execute_script("UPDATE metrics_day SET built_version = 0")


class Migration(migrations.Migration):
    dependencies = [("models", "0013_experiments_costs")]

    operations = [ops.RunPython(rebuild, rebuild)]
