"""Schemathesis hooks for gorgias-proxy (loaded with SCHEMATHESIS_HOOKS=schemathesis_hooks).

An Idempotency-Key names one logical request: reusing it with another body is answered 422 by
design (draft-ietf-httpapi-idempotency-key-header). A schema cannot say "unique per request",
so the generator would reuse keys such as "0" across unrelated bodies. This hook gives every
generated case that carries a schema-valid key a fresh one; malformed keys (negative cases) are
left alone so their 400 is still checked. Idempotent replay itself is covered by the test suite.
"""
import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) \
                and VALID_KEY.match(headers[name]):
            headers[name] = f"st-{uuid.uuid4()}"
    case.headers = headers


@schemathesis.hook("before_call")
def distinct_message_ids(ctx, case, **kwargs):
    """Message ids must be unique within a ticket (documented; JSON Schema cannot say "unique
    by one property"). In positive cases only, a repeated id is made distinct, so the check
    still compares every other rule; the duplicate-id refusal is covered by the test suite."""
    meta = getattr(case, "meta", None)
    if meta is None or str(meta.generation.mode) != "positive":
        return
    body = case.body
    messages = body.get("ticket", {}).get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return
    seen = set()
    for i, m in enumerate(messages):
        if isinstance(m, dict) and isinstance(m.get("id"), str):
            mid = m["id"]
            if mid in seen:
                suffix = f"~{i}"
                mid = mid[: 255 - len(suffix)] + suffix
                m["id"] = mid
            seen.add(mid)


@schemathesis.hook("before_call")
def distinct_custom_fields_and_bounded_meta(ctx, case, **kwargs):
    """Two more documented rules a schema cannot state: a custom field id appears once per ticket,
    and `ticket.meta` is at most 4 KiB serialised. In positive cases only, repeated ids are
    dropped and an oversized meta is trimmed; both refusals are covered by the test suite."""
    meta = getattr(case, "meta", None)
    if meta is None or str(meta.generation.mode) != "positive":
        return
    ticket = case.body.get("ticket") if isinstance(case.body, dict) else None
    if not isinstance(ticket, dict):
        return
    fields = ticket.get("custom_fields")
    if isinstance(fields, list):
        seen, kept = set(), []
        for f in fields:
            fid = f.get("id") if isinstance(f, dict) else None
            if fid in seen:
                continue
            seen.add(fid)
            kept.append(f)
        ticket["custom_fields"] = kept
    m = ticket.get("meta")
    if isinstance(m, dict):
        import json
        while m and len(json.dumps(m, separators=(",", ":")).encode()) > 4096:
            m.pop(next(iter(m)))
