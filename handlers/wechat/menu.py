"""The official account's menu (menu.json): its shape checked, and every click key answered by
an OA route. `python -m app oa menu push` (app/oa_menu.py) sends it to WeChat."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.wechat.oa import OAMessage
from handlers.wechat.oa_routes import router

MAX_BUTTONS, MAX_SUB_BUTTONS = 3, 5


def load_menu(path: str | Path) -> dict[str, Any]:
    """The menu in `path`, checked against WeChat's shape: 1–3 buttons, each a click (with a
    key) or a view (with a url), or a group of 1–5 such buttons. ValueError says what is wrong."""
    menu = json.loads(Path(path).read_text(encoding="utf-8"))
    buttons = menu.get("button") if isinstance(menu, dict) else None
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        raise ValueError(f"menu needs a 'button' list of 1 to {MAX_BUTTONS}")
    for button in buttons:
        subs = button.get("sub_button") if isinstance(button, dict) else None
        if subs is not None:
            if not isinstance(subs, list) or not 1 <= len(subs) <= MAX_SUB_BUTTONS:
                raise ValueError(f"'{button.get('name')}': sub_button needs 1 to {MAX_SUB_BUTTONS}")
            for sub in subs:
                _check_leaf(sub)
        else:
            _check_leaf(button)
    return menu


def _check_leaf(button: Any) -> None:
    if not isinstance(button, dict) or not button.get("name"):
        raise ValueError("every button needs a name")
    kind = button.get("type")
    if kind == "click":
        if not button.get("key"):
            raise ValueError(f"'{button['name']}': a click button needs a key")
    elif kind == "view":
        if not str(button.get("url", "")).startswith(("http://", "https://")):
            raise ValueError(f"'{button['name']}': a view button needs an http(s) url")
    elif kind not in ("miniprogram", "scancode_push", "scancode_waitmsg", "location_select"):
        raise ValueError(f"'{button['name']}': unsupported button type {kind!r}")


def unrouted_keys(menu: dict[str, Any]) -> list[str]:
    """Click keys of `menu` that no OA route answers (they would fall to the fallback)."""
    keys = [b.get("key") for top in menu["button"] for b in (top.get("sub_button") or [top])
            if b.get("type") == "click"]
    missing = []
    for key in keys:
        probe = OAMessage(to_user="gh", from_user="o", create_time=0, msg_type="event",
                          event="click", event_key=key)
        if router.resolve(probe) is router._fallback:  # noqa: SLF001 - the router has no public probe
            missing.append(key)
    return missing
