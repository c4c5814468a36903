"""On PostgreSQL, writes that land on an already built metrics day bump that day's `version`,
so app/domain/metrics_days.py builds it again before reading it: a make-up check-in, a late
payment notification, a payment credited at first login, a re-dated or deleted row.

Inserts are checked once per statement (a transition table: bulk inserts such as the expiry
job's cost one lookup, and the usual insert of today finds no built day through the index on
ends_at); updates of the dating columns and deletes once per row. SQLite has no triggers and
computes every day from the source tables instead."""
from tortoise import migrations
from tortoise.migrations import operations as ops

# table -> (the column that dates a row, "at" for an instant or "day" for a business day,
#           the columns whose change moves a row between days or sets)
DATED = {
    "ledger_entry": ("created_at", "at", ("created_at", "member_id", "delta", "reason")),
    "checkin": ("day", "day", ("day", "member_id")),
    "payment": ("paid_at", "at", ("paid_at", "member_id", "payer_total_fen")),
    "member": ("created_at", "at", ("created_at",)),
}


def _on(column: str, kind: str, value: str) -> str:
    """The built days that `value` (a column of a row) falls on."""
    if kind == "day":
        return f"m.day = {value}"
    return f"(m.starts_at <= {value} AND m.ends_at > {value})"


def _statements(table: str) -> list[str]:
    column, kind, changes = DATED[table]
    inserted = (f"m.day IN (SELECT n.{column} FROM new_rows n)" if kind == "day" else
                f"m.ends_at > (SELECT min(n.{column}) FROM new_rows n) AND EXISTS ("
                f"SELECT 1 FROM new_rows n WHERE n.{column} >= m.starts_at AND n.{column} < m.ends_at)")
    old, new = _on(column, kind, f"OLD.{column}"), _on(column, kind, f"NEW.{column}")
    distinct = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in changes)
    return [
        f"""CREATE OR REPLACE FUNCTION metrics_day_{table}_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE metrics_day m SET version = m.version + 1 WHERE {inserted};
  RETURN NULL;
END $$""",
        f"""CREATE OR REPLACE FUNCTION metrics_day_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    UPDATE metrics_day m SET version = m.version + 1 WHERE {old};
  ELSE
    UPDATE metrics_day m SET version = m.version + 1 WHERE {old} OR {new};
  END IF;
  RETURN NULL;
END $$""",
        f"DROP TRIGGER IF EXISTS metrics_day_inserted ON {table}",
        f"CREATE TRIGGER metrics_day_inserted AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows"
        f" FOR EACH STATEMENT EXECUTE FUNCTION metrics_day_{table}_inserted()",
        f"DROP TRIGGER IF EXISTS metrics_day_updated ON {table}",
        f"CREATE TRIGGER metrics_day_updated AFTER UPDATE OF {', '.join(changes)} ON {table}"
        f" FOR EACH ROW WHEN ({distinct}) EXECUTE FUNCTION metrics_day_{table}_changed()",
        f"DROP TRIGGER IF EXISTS metrics_day_deleted ON {table}",
        f"CREATE TRIGGER metrics_day_deleted AFTER DELETE ON {table}"
        f" FOR EACH ROW EXECUTE FUNCTION metrics_day_{table}_changed()",
    ]


def _postgres(schema_editor) -> bool:
    return schema_editor.client.capabilities.dialect == "postgres"


async def create(apps, schema_editor) -> None:
    if not _postgres(schema_editor):
        return
    for table in DATED:
        for statement in _statements(table):
            await schema_editor.client.execute_script(statement)


async def drop(apps, schema_editor) -> None:
    if not _postgres(schema_editor):
        return
    for table in DATED:
        await schema_editor.client.execute_script(
            f"DROP TRIGGER IF EXISTS metrics_day_inserted ON {table};"
            f" DROP TRIGGER IF EXISTS metrics_day_updated ON {table};"
            f" DROP TRIGGER IF EXISTS metrics_day_deleted ON {table};"
            f" DROP FUNCTION IF EXISTS metrics_day_{table}_inserted();"
            f" DROP FUNCTION IF EXISTS metrics_day_{table}_changed()")


class Migration(migrations.Migration):
    dependencies = [("models", "0005_metrics_days")]

    operations = [ops.RunPython(create, drop)]
