"""On PostgreSQL, the range indexes of 0003 also carry the columns the metrics read, so the
month's rows are counted from the index alone (index-only scans): about 30% off a cold
GET /admin/metrics on a million members (bench/metrics.py). Same names, so Tortoise's model
state is unchanged; SQLite keeps the plain indexes."""
from tortoise import migrations
from tortoise.migrations import operations as ops

# (index name from 0003, table, key column, carried columns)
COVERING = (
    ("idx_ledger_entr_created_b7ce0f", "ledger_entry", "created_at", "member_id, delta, reason"),
    ("idx_checkin_day_62d8d3", "checkin", "day", "member_id"),
    ("idx_payment_paid_at_d4db64", "payment", "paid_at", "member_id, payer_total_fen"),
    ("idx_member_created_35a4d4", "member", "created_at", "tier"),
)


def _postgres(schema_editor) -> bool:
    return schema_editor.client.capabilities.dialect == "postgres"


async def carry(apps, schema_editor) -> None:
    if not _postgres(schema_editor):
        return
    for name, table, column, included in COVERING:
        await schema_editor.client.execute_script(
            f'DROP INDEX IF EXISTS "{name}"; CREATE INDEX "{name}" ON "{table}" ("{column}") INCLUDE ({included})')


async def uncarry(apps, schema_editor) -> None:
    if not _postgres(schema_editor):
        return
    for name, table, column, _ in COVERING:
        await schema_editor.client.execute_script(
            f'DROP INDEX IF EXISTS "{name}"; CREATE INDEX "{name}" ON "{table}" ("{column}")')


class Migration(migrations.Migration):
    dependencies = [("models", "0003_metrics_indexes")]

    operations = [ops.RunPython(carry, uncarry)]
