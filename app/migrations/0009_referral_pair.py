"""A referral names its unordered pair of members, unique: of A invites B and B invites A only
one can stand. Rows from before get the key too, the older of a reverse pair keeping it."""
from tortoise import fields, migrations
from tortoise.migrations import operations as ops


async def fill_pairs(apps, schema_editor) -> None:
    low, high = (("LEAST", "GREATEST") if schema_editor.client.capabilities.dialect == "postgres"
                 else ("MIN", "MAX"))
    pair = (f"CAST({low}(inviter_id, invitee_id) AS TEXT) || ':' || "
            f"CAST({high}(inviter_id, invitee_id) AS TEXT)")
    await schema_editor.client.execute_script(
        f"UPDATE referral SET pair_key = {pair} WHERE id IN "
        f"(SELECT MIN(id) FROM referral GROUP BY {low}(inviter_id, invitee_id), {high}(inviter_id, invitee_id))")


async def noop(apps, schema_editor) -> None:
    return None


class Migration(migrations.Migration):
    dependencies = [("models", "0008_redemption_refunds")]

    operations = [
        ops.AddField(model_name="Referral", name="pair_key",
                     field=fields.CharField(max_length=41, null=True, unique=True)),
        ops.RunPython(fill_pairs, noop),
    ]
