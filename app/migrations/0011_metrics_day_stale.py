"""A late write no longer updates `metrics_day`: it appends a row to `metrics_day_stale` for each
built day it lands on, and a day is current while it has none. A build holds row locks on the
days it builds (metrics_day FOR UPDATE) for as long as it aggregates them; with 0006's triggers
every payment, check-in or refund dated on such a day waited for that lock (seconds, in the money
path). An INSERT into a table without constraints waits for nobody; the build deletes the rows
it has seen before it reads the sources, so a write that commits later leaves its row behind
and the day is built again. SQLite has no triggers: the table exists there only to be empty."""
from tortoise import migrations
from tortoise.migrations import operations as ops

import importlib

# 0006's tables, dating columns and day conditions: the same triggers, with a new body.
_0006 = importlib.import_module("app.migrations.0006_metrics_day_triggers")


def functions(action: str) -> list[str]:
    """0006's trigger functions with `action` ("... WHERE {where}") run on the days a write lands on."""
    statements = []
    for table, (column, kind, _changes) in _0006.DATED.items():
        inserted = (f"m.day IN (SELECT n.{column} FROM new_rows n)" if kind == "day" else
                    f"m.ends_at > (SELECT min(n.{column}) FROM new_rows n) AND EXISTS ("
                    f"SELECT 1 FROM new_rows n WHERE n.{column} >= m.starts_at AND n.{column} < m.ends_at)")
        old, new = _0006._on(column, kind, f"OLD.{column}"), _0006._on(column, kind, f"NEW.{column}")
        statements += [
            f"""CREATE OR REPLACE FUNCTION metrics_day_{table}_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {action.format(where=inserted)};
  RETURN NULL;
END $$""",
            f"""CREATE OR REPLACE FUNCTION metrics_day_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    {action.format(where=old)};
  ELSE
    {action.format(where=f"{old} OR {new}")};
  END IF;
  RETURN NULL;
END $$"""]
    return statements


async def create(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        await client.execute_script(
            "CREATE TABLE IF NOT EXISTS metrics_day_stale (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " day_id BIGINT NOT NULL)")
        return
    await client.execute_script(
        "CREATE TABLE IF NOT EXISTS metrics_day_stale (id BIGSERIAL PRIMARY KEY, day_id BIGINT NOT NULL);"
        " CREATE INDEX IF NOT EXISTS metrics_day_stale_day_id ON metrics_day_stale (day_id)")
    for statement in functions("INSERT INTO metrics_day_stale (day_id) SELECT m.id FROM metrics_day m"
                                        " WHERE {where}"):
        await client.execute_script(statement)


async def drop(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        for statement in functions("UPDATE metrics_day m SET version = m.version + 1 WHERE {where}"):
            await client.execute_script(statement)
    await client.execute_script("DROP TABLE IF EXISTS metrics_day_stale")


class Migration(migrations.Migration):
    dependencies = [("models", "0010_wecom")]

    operations = [ops.RunPython(create, drop)]
