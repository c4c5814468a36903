"""The dashboard in a real headless Chromium (`make browser` installs it), driven over the Chrome
DevTools protocol with aiohttp's websocket client: log in with the token, let the page fetch
/admin/metrics and draw, then read the numbers off the SVG and save a screenshot."""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import tempfile
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from app.domain import points
from app.models import Checkin, LedgerEntry, Member, Referral
from tests.conftest import ADMIN_TOKEN, shanghai

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


class DevTools:
    """One page over CDP: `call(method, **params)` → the result; events are ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids, self.waiting = ws, itertools.count(1), {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            future = self.waiting.pop(data.get("id"), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def call(self, method: str, **params):
        number = next(self.ids)
        self.waiting[number] = future = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 20)
        assert "error" not in answer, answer
        return answer["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 15.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await self.js(expression)
            if value:
                return value
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {expression}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def chromium():
    """A headless Chromium of its own (fresh profile, no network chatter) and its DevTools port."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: run `make browser`"
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1100",
        "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        port = None
        async with asyncio.timeout(30):
            while port is None:
                line = (await proc.stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before it listened"
                found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                port = int(found.group(1)) if found else None
        # Keep draining stderr so chromium never blocks on a full pipe.
        drain = asyncio.create_task(proc.stderr.read())
        yield port
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _seed() -> None:
    a = await Member.create(appid="wx", openid="o-a", invite_code="a", tier="gold",
                            created_at=shanghai(2026, 11, 1, 9, 0))
    b = await Member.create(appid="wx", openid="o-b", invite_code="b", created_at=shanghai(2026, 11, 1, 20, 0))
    c = await Member.create(appid="wx", openid="o-c", invite_code="c", created_at=shanghai(2026, 11, 4, 9, 0))
    for day in (1, 2, 3):
        await Checkin.create(member=a, day=date(2026, 11, day))
    await Checkin.create(member=b, day=date(2026, 11, 2))
    for delta, reason, at in ((100, "checkin", shanghai(2026, 11, 2, 9, 0)),
                              (-40, "redeem", shanghai(2026, 11, 3, 9, 0)),
                              (-10, "expire", shanghai(2026, 11, 5, 9, 0))):
        key = f"test:{reason}"
        if delta > 0:
            posting = await points.award(member_id=a.id, amount=delta, reason=reason, key=key, now=at,
                                         expiry_months=12)
        else:
            posting = await points.spend(member_id=a.id, amount=-delta, reason=reason, key=key, now=at)
        await LedgerEntry.filter(id=posting.entry.id).update(created_at=at)
    await Referral.create(inviter=a, invitee=b, created_at=shanghai(2026, 11, 1, 20, 0),
                          paid_at=shanghai(2026, 11, 2, 9, 0))
    await Referral.create(inviter=a, invitee=c, created_at=shanghai(2026, 11, 4, 9, 0))


async def test_dashboard_draws_the_metrics_of_the_range(client, chromium):
    await _seed()
    page_url = str(client.make_url("/admin/?from=2026-11-01&to=2026-11-07"))
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{chromium}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20) as ws:
            tools = DevTools(ws)
            await tools.call("Page.enable")
            await tools.call("Emulation.setDeviceMetricsOverride", width=1400, height=1100,
                             deviceScaleFactor=1, mobile=False)
            await tools.call("Page.navigate", url=page_url)
            # No token yet: the page asks for it and has fetched nothing.
            await tools.until("document.readyState === 'complete' && "
                              "!document.getElementById('login').classList.contains('hidden')")
            assert await tools.js("document.body.dataset.ready") is None
            await tools.js(f"document.getElementById('token').value = {json.dumps(ADMIN_TOKEN)};"
                           "document.getElementById('login').requestSubmit(); true")
            await tools.until("document.body.dataset.ready === '1'")

            charts = await tools.js("""(() => {
                const out = {};
                for (const svg of document.querySelectorAll('svg[data-chart]')) {
                  out[svg.dataset.chart] = [...svg.querySelectorAll('rect.bar')]
                    .filter(r => parseFloat(r.getAttribute('height')) >= 0)
                    .map(r => [r.dataset.label, Number(r.dataset.value)]);
                }
                return out; })()""")
            figures = await tools.js("Object.fromEntries([...document.querySelectorAll('.figure b')]"
                                     ".map(b => [b.id.slice(4), b.textContent]))")
            stored = await tools.js("sessionStorage.getItem('members-admin-token')")
            drawn = await tools.js("[...document.querySelectorAll('svg[data-chart] rect.bar')]"
                                   ".filter(r => parseFloat(r.getAttribute('height')) > 0).length")
            shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            tools.reader.cancel()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))

    assert stored == ADMIN_TOKEN
    assert charts["chart-new"] == [["11-01", 2], ["11-02", 0], ["11-03", 0], ["11-04", 1],
                                   ["11-05", 0], ["11-06", 0], ["11-07", 0]]
    assert charts["chart-tiers"] == [["regular", 2], ["silver", 0], ["gold", 1], ["diamond", 0]]
    assert charts["chart-points"] == [["issued", 100], ["spent", 40], ["expired", 10]]
    assert charts["chart-streaks"] == [["1", 1], ["2", 0], ["3", 1], ["4", 0], ["5", 0], ["6", 0], ["7+", 0]]
    assert charts["chart-funnel"] == [["invited", 2], ["paid", 1], ["rewarded", 0]]
    assert drawn == 2 + 2 + 3 + 2 + 3  # every non-zero value has a visible bar; the funnel always
    assert figures["members"] == "3" and figures["new"] == "3" and figures["active"] == "2"
    assert figures["checkins"] == "4"
    assert figures["consumption"] == "40.0%"
    assert figures["repurchase"] == "—"  # nobody paid: no rate rather than a made-up 0
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_a_wrong_token_sends_the_operator_back_to_the_form(client, chromium):
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{chromium}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"]) as ws:
            tools = DevTools(ws)
            await tools.call("Page.navigate", url=str(client.make_url("/admin/")))
            await tools.until("document.readyState === 'complete' && !!document.getElementById('token')")
            await tools.js("document.getElementById('token').value = 'wrong';"
                           "document.getElementById('login').requestSubmit(); true")
            await tools.until("document.getElementById('error').textContent === 'token refused'")
            assert await tools.js("sessionStorage.getItem('members-admin-token')") is None
            assert not await tools.js("document.getElementById('login').classList.contains('hidden')")
            tools.reader.cancel()


async def test_the_link_make_run_prints_signs_the_operator_in(client, chromium):
    """`make run` prints /admin/#token=…: the page keeps the token and drops it from the address."""
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{chromium}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"]) as ws:
            tools = DevTools(ws)
            await tools.call("Page.navigate", url=str(client.make_url("/admin/")) + f"#token={ADMIN_TOKEN}")
            await tools.until("document.readyState === 'complete' && document.body.dataset.ready === '1'")
            assert await tools.js("sessionStorage.getItem('members-admin-token')") == ADMIN_TOKEN
            assert await tools.js("location.hash") == ""
            assert await tools.js("document.getElementById('login').classList.contains('hidden')")
            tools.reader.cancel()


async def test_dashboard_shows_costs_campaigns_and_experiments(client, chromium, clock):
    from datetime import timedelta

    from app.domain import costs, experiments
    from app.models import ExperimentAssignment, Payment

    clock.travel_to(shanghai(2026, 11, 20, 12, 0))
    a = await Member.create(appid="wx", openid="o-g-a", invite_code="ga", created_at=shanghai(2026, 11, 1, 9, 0))
    await Payment.create(transaction_id="t-g-1", out_trade_no="o1", openid=a.openid, member_id=a.id,
                         total_fen=100_000, payer_total_fen=100_000, credited=True, paid_at=shanghai(2026, 11, 3, 9, 0))
    await costs.record(conn=None, kind="coupon", amount_fen=15_000, key="c:g", member_id=a.id, campaign="spring",
                       now=shanghai(2026, 11, 3, 10, 0))
    exp = await experiments.create(body={
        "key": "coupon-ab", "name": "AB", "population": {"segment": "active"},
        "arms": [{"key": "a", "weight": 1, "reward": {"amount_fen": 500, "valid_days": 7}},
                 {"key": "b", "weight": 1, "reward": {"amount_fen": 500, "valid_days": 3}}],
        "metric": {"kind": "repurchase", "days": 14}, "horizon_days": 30,
        "starts_at": shanghai(2026, 11, 1, 0, 0).isoformat()}, actor="t", now=shanghai(2026, 11, 1, 0, 0))
    # converted by the payment of 3 November (the payment path stamps it; here it is set by hand)
    await ExperimentAssignment.create(experiment_id=exp.id, member_id=a.id, arm="b",
                                      assigned_at=shanghai(2026, 11, 2, 9, 0) - timedelta(hours=1),
                                      converted_at=shanghai(2026, 11, 3, 9, 0))
    page_url = str(client.make_url("/admin/?from=2026-11-01&to=2026-11-30"))
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{chromium}/json/new?about:blank") as resp:
            target = await resp.json()
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20) as ws:
            tools = DevTools(ws)
            await tools.call("Page.navigate", url=page_url)
            await tools.until("document.readyState === 'complete' && !!document.getElementById('token')")
            await tools.js(f"sessionStorage.setItem('members-admin-token', {json.dumps(ADMIN_TOKEN)}); location.reload(); true")
            await tools.until("!!document.body && document.body.dataset.ready === '1'")
            rows = await tools.js("""(() => Object.fromEntries(['costs', 'campaigns', 'experiments'].map(id =>
                [id, [...document.querySelectorAll('#' + id + ' tr[data-key]')].map(tr =>
                    [...tr.querySelectorAll('td')].map(td => td.textContent))])))()""")
            summary = await tools.js("document.getElementById('costs-summary').dataset.alert")
            tools.reader.cancel()
    # 150 yuan of coupons on 1000 yuan of member spend: 15 %, above the 5–10 % band
    assert rows["costs"] == [["2026-11", "150.00", "1000.00", "15.0%", "high"]] and summary == "alert"
    assert rows["campaigns"] == [["spring", "150.00", "1", "100.0%"]]
    assert rows["experiments"][0][:3] == ["a (control)", "0", "0"]
    assert rows["experiments"][1][:4] == ["b", "1", "1", "100.0%"]
