"""On PostgreSQL, leave room in the pages of the two hottest tables so their frequent updates
are HOT (heap-only: no new index entries). A member row is updated on every check-in, payment
and expiry (points, streak, growth) and carries ten indexes; a lot's `remaining` is updated
when it is spent or expires. Neither changes an indexed column, so with free space in its page
the new row version stays there. Applies to pages written from now on (and after VACUUM FULL
or a restore); SQLite has no such setting."""
from tortoise import migrations
from tortoise.migrations import operations as ops

FILLFACTOR = {"member": 85, "ledger_entry": 90}


async def leave_room(apps, schema_editor) -> None:
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    for table, percent in FILLFACTOR.items():
        await schema_editor.client.execute_script(f"ALTER TABLE {table} SET (fillfactor = {percent})")


async def fill(apps, schema_editor) -> None:
    if schema_editor.client.capabilities.dialect != "postgres":
        return
    for table in FILLFACTOR:
        await schema_editor.client.execute_script(f"ALTER TABLE {table} RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("models", "0006_metrics_day_triggers")]

    operations = [ops.RunPython(leave_room, fill)]
